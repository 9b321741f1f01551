"""Label efficiency on ../shared/data/oral-dev: q2-aam (pretrained once without
labels, then frozen or fine-tuned single fits) against q2-sample-classifier's
random forest, with 50, 100, 200, 400 and all labeled training samples, three
seeds each; and cross-sectional age in the American Gut study (qiita-10317)
under its own 5-fold cross-validation.

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py \\
        --out bench/out/label_efficiency.json
    .venv/bin/python bench/label_efficiency.py --summarize bench/out/label_efficiency.json

One seeded 80/20 split (the same split as oral_supervised.py's seed): the
encoder is pretrained on the whole training part without labels; each labeled
subset is a seeded draw from the training part; everything is scored on the
same held-out 20%. The fits use the plugin's fit defaults (TrainConfig.preset
('fit')) with the neighbour look-up off. Only the core's public API is used.

Choosing a setting never looks at the held-out part: `--selection 400` scores
on 400 seeded training-part samples instead (labeled subsets are then drawn
from the rest of the training part), and `--fit-settings` changes the fits'
TrainConfig (its runs are named after it), for example

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py --selection 400 \
        --sizes 50,100,400 --models forest,frozen --skip-cross-sectional \
        --fit-settings min_epoch_steps=0 --out bench/out/selection.json
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.bundle import ModelBundle  # noqa: E402
from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import SampleSet, split_indices  # noqa: E402
from q2_aam.core.metrics import classification_metrics, regression_metrics  # noqa: E402
from q2_aam.core.pretrain import pretrain  # noqa: E402
from q2_aam.core.supervised import embed, fit, predict  # noqa: E402

TASKS = {"age": "regressor", "study": "classifier"}
CROSS_SECTIONAL_STUDY = "qiita-10317"


class Oral:
    """oral-dev's table, sequences, metadata and UniFrac, and SampleSets of any samples."""

    def __init__(self):
        self.table = oral.load_table()
        self.sequences = oral.load_sequences()
        self.metadata = oral.load_metadata()
        self.ids = [s for s in self.table.ids(axis="sample") if s in self.metadata.index]

    def sample_set(self, sample_ids, model_cfg):
        table = self.table.filter(list(sample_ids), axis="sample", inplace=False)
        table = table.remove_empty(axis="observation", inplace=False)
        return SampleSet(table.matrix_data.T, table.ids(axis="sample"),
                         table.ids(axis="observation"), self.sequences, model_cfg.max_bp,
                         model_cfg.asv_limit)

    def relative_frequencies(self, sample_ids):
        dense = self.table.filter(list(sample_ids), axis="sample",
                                  inplace=False).matrix_data.T.toarray()
        return dense / dense.sum(1, keepdims=True)


def split_ids(oral_data, split_seed):
    """(training IDs, test IDs): the seeded 80/20 split every oral-dev benchmark uses."""
    train_idx, test_idx = split_indices(len(oral_data.ids), 0.2,
                                        np.random.default_rng(split_seed))
    return [oral_data.ids[i] for i in train_idx], [oral_data.ids[i] for i in test_idx]


def pretrain_encoder(oral_data, train_ids, embedding_dim, layers, epochs, seed):
    """An encoder pretrained without labels on `train_ids` (learning rate 1e-3,
    every epoch run, the best kept): the encoders BENCHMARKS.md's fits start from."""
    model_cfg = ModelConfig(embedding_dim=embedding_dim, attention_layers=layers)
    data = oral_data.sample_set(train_ids, model_cfg)
    data.distances = oral.distances(oral.load_unifrac(), data)
    return pretrain(data, model_cfg, TrainConfig.preset(
        "pretrain", epochs=epochs, patience=epochs, learning_rate=1e-3, random_seed=seed))


def encoder_for(oral_data, train_ids, args):
    """The encoder pretrained without labels on the training part (cached on disk)."""
    if os.path.exists(os.path.join(args.encoder_dir, "config.json")):
        return ModelBundle.load(args.encoder_dir), {"loaded_from": args.encoder_dir}
    start = time.perf_counter()
    encoder = pretrain_encoder(oral_data, train_ids, args.embedding_dim, args.layers,
                               args.pretrain_epochs, args.split_seed)
    encoder.save(args.encoder_dir)
    best = encoder.history.loc[encoder.history["epoch"] == encoder.info["best_epoch"]].iloc[0]
    return encoder, {"seconds": time.perf_counter() - start,
                     "val_unifrac_r2": float(best["val/unifrac_r2"])}


def selection_split(train_ids, size, seed):
    """(labeled pool, selection samples): `size` seeded training-part samples
    kept aside for choosing settings, and the rest."""
    chosen = set(np.random.default_rng([seed, 7]).choice(len(train_ids), size, replace=False))
    return ([s for i, s in enumerate(train_ids) if i not in chosen],
            [s for i, s in enumerate(train_ids) if i in chosen])


def labeled_subset(train_ids, size, seed):
    if size >= len(train_ids):
        return list(train_ids)
    rng = np.random.default_rng([seed, size])
    return [train_ids[i] for i in np.sort(rng.choice(len(train_ids), size, replace=False))]


def score(task, true, predicted):
    if task == "age":
        return regression_metrics(np.asarray(true, dtype=float), np.asarray(predicted, float))
    return classification_metrics(np.asarray(true, dtype=str), np.asarray(predicted, dtype=str))


def random_forest(oral_data, task, train_ids, test_ids, seed):
    """q2-sample-classifier's estimator: scikit-learn's random forest, 500 trees."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    target = oral_data.metadata[task]
    forest = (RandomForestClassifier if task == "study" else RandomForestRegressor)(
        n_estimators=500, random_state=seed, n_jobs=1)
    forest.fit(oral_data.relative_frequencies(train_ids), target[train_ids].to_numpy())
    return forest.predict(oral_data.relative_frequencies(test_ids))


def aam_fit(oral_data, encoder, task, mode, train_ids, test_ids, seed, args):
    target = oral_data.metadata[task]
    data = oral_data.sample_set(train_ids, encoder.model_config)
    epochs = args.finetune_epochs if mode == "finetuned" else 100
    bundle = fit(data, target[data.sample_ids].to_numpy(), TASKS[task],
                 ModelConfig.preset("fit", **settings(args.model_settings)),
                 TrainConfig.preset("fit", **{"epochs": epochs, "random_seed": seed,
                                              **settings(args.fit_settings)}),
                 encoder=encoder, freeze_encoder=mode == "frozen", lookup_neighbours=0)
    test = oral_data.sample_set(test_ids, encoder.model_config)
    predicted, _ = predict(bundle, test)
    return (pd.Series(predicted, index=test.sample_ids)[list(test_ids)].to_numpy(),
            {"best_epoch": bundle.info["best_epoch"]})


def settings(text):
    """'name=value,...' -> config overrides (numbers parsed as such)."""
    overrides = {}
    for item in filter(None, text.split(",")):
        name, value = item.split("=")
        overrides[name] = json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value
    return overrides


_EMBEDDINGS = {}


def probe(oral_data, encoder, task, train_ids, test_ids):
    """A linear probe: ridge (age; its penalty chosen by leave-one-out on the
    labeled samples) or logistic regression (study; fixed C=1) on the frozen
    encoder's standardized sample embeddings."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if not _EMBEDDINGS:
        data = oral_data.sample_set(oral_data.ids, encoder.model_config)
        embeddings, _ = embed(encoder, data)
        _EMBEDDINGS.update(zip(data.sample_ids, embeddings))
    x_train = np.stack([_EMBEDDINGS[s] for s in train_ids])
    x_test = np.stack([_EMBEDDINGS[s] for s in test_ids])
    target = oral_data.metadata[task][list(train_ids)].to_numpy()
    model = (RidgeCV(alphas=np.logspace(-3, 3, 13)) if task == "age"
             else LogisticRegression(C=1.0, max_iter=5000))
    return make_pipeline(StandardScaler(), model).fit(x_train, target).predict(x_test)


def run(key, results, args, job):
    """Run `job` unless `key` is already in results (so an interrupted run resumes)."""
    if key in results["runs"]:
        return
    start = time.perf_counter()
    report = job()
    results["runs"][key] = {**report, "seconds": time.perf_counter() - start}
    print(key, results["runs"][key], flush=True)
    write(results, args.out)


def cross_sectional(oral_data, encoder, results, args):
    """Age within qiita-10317 alone (one sample per host), 5-fold cross-validation."""
    ids = [s for s in oral_data.ids if oral_data.metadata.loc[s, "study"] == CROSS_SECTIONAL_STUDY]
    folds = np.array_split(np.random.default_rng(args.split_seed).permutation(len(ids)), 5)
    for k, fold in enumerate(folds):
        test_ids = [ids[i] for i in np.sort(fold)]
        train_ids = [s for s in ids if s not in set(test_ids)]
        true = oral_data.metadata["age"][test_ids]
        for model in args.cross_sectional_models.split(","):
            def job(model=model):
                fitted = {}
                if model == "forest":
                    predicted = random_forest(oral_data, "age", train_ids, test_ids, k)
                elif model == "probe":
                    predicted = probe(oral_data, encoder, "age", train_ids, test_ids)
                else:
                    predicted, fitted = aam_fit(oral_data, encoder, "age", model,
                                                train_ids, test_ids, k, args)
                return {**score("age", true, predicted), "n_test": len(test_ids), **fitted}
            run(f"cross_sectional/{model}/fold{k}", results, args, job)
        run(f"cross_sectional/median/fold{k}", results, args, lambda: score(
            "age", true, np.full(len(test_ids),
                                 oral_data.metadata["age"][train_ids].median())))


def write(results, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)


def summarize(path):
    """Markdown tables: mean (min-max over seeds) of each measure."""
    with open(path) as fh:
        runs = json.load(fh)["runs"]
    rows = []
    for key, report in runs.items():
        parts = key.split("/")
        if parts[0] == "cross_sectional":
            rows.append({"table": "cross", "model": parts[1], "size": "", "task": "age",
                         **report})
        else:
            task, size, model, _ = parts
            rows.append({"table": "labels", "task": task, "size": size, "model": model,
                         **report})
    frame = pd.DataFrame(rows)

    def cell(values, digits):
        values = values.dropna()
        if len(values) == 1:
            return f"{values.mean():.{digits}f}"
        return f"{values.mean():.{digits}f} ({values.min():.{digits}f}-{values.max():.{digits}f})"

    labels = frame[frame["table"] == "labels"]
    print("| labels | model | age MAE | age R^2 | study accuracy | study macro F1 | "
          "seconds (age + study) |")
    print("|---|---|---|---|---|---|---|")
    sizes = sorted(labels["size"].unique(), key=lambda s: (s == "all", int(s) if s != "all"
                                                           else 0))
    for size in sizes:
        for model in dict.fromkeys(labels["model"]):     # in the order they ran
            age = labels[(labels["size"] == size) & (labels["model"] == model)
                         & (labels["task"] == "age")]
            study = labels[(labels["size"] == size) & (labels["model"] == model)
                           & (labels["task"] == "study")]
            if age.empty and study.empty:
                continue
            seconds = (age["seconds"].mean() if not age.empty else 0) + (
                study["seconds"].mean() if not study.empty else 0)
            print(f"| {size} | {model} | {cell(age['mae'], 2) if not age.empty else ''} | "
                  f"{cell(age['r2'], 2) if not age.empty else ''} | "
                  f"{cell(study['accuracy'], 3) if not study.empty else ''} | "
                  f"{cell(study['macro_f1'], 3) if not study.empty else ''} | {seconds:.0f} |")
    cross = frame[frame["table"] == "cross"]
    if not cross.empty:
        print("\n| model | age MAE, 5 folds of qiita-10317 | R^2 |\n|---|---|---|")
        for model, part in cross.groupby("model"):
            print(f"| {model} | {cell(part['mae'], 2)} | {cell(part['r2'], 2)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--sizes", default="50,100,200,400,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="forest,frozen,finetuned",
                        help="of forest, probe (linear probe of the frozen embeddings), "
                             "frozen, finetuned")
    parser.add_argument("--tasks", default="age,study")
    parser.add_argument("--finetune-sizes", default="50,100,200,400,all",
                        help="label counts at which fine-tuned fits run (they are slow on a CPU)")
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--cross-sectional-models", default="forest,frozen",
                        help="of forest, probe, frozen, finetuned")
    parser.add_argument("--skip-cross-sectional", action="store_true")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--encoder-dir", default="bench/out/label-efficiency-encoder")
    parser.add_argument("--out", default="bench/out/label_efficiency.json")
    parser.add_argument("--summarize", metavar="JSON", help="print the tables of a finished run")
    parser.add_argument("--selection", type=int, default=0,
                        help="score on this many training-part samples, not the held-out part")
    parser.add_argument("--fit-settings", default="",
                        help="TrainConfig overrides of the q2-aam fits, name=value,...")
    parser.add_argument("--model-settings", default="",
                        help="ModelConfig overrides of the q2-aam fits (ensemble_size=5, ...)")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return

    results = {"arguments": vars(args), "runs": {}}
    if os.path.exists(args.out):
        with open(args.out) as fh:
            results["runs"] = json.load(fh)["runs"]
    oral_data = Oral()
    train_ids, test_ids = split_ids(oral_data, args.split_seed)
    encoder, results["pretrain"] = encoder_for(oral_data, train_ids, args)
    if args.selection:
        train_ids, test_ids = selection_split(train_ids, args.selection, args.split_seed)
    print("pretrain", results["pretrain"], flush=True)
    finetune_sizes = set(args.finetune_sizes.split(","))
    for size in args.sizes.split(","):
        n = len(train_ids) if size == "all" else int(size)
        for seed in map(int, args.seeds.split(",")):
            subset = labeled_subset(train_ids, n, seed)
            for task in args.tasks.split(","):
                true = oral_data.metadata[task][test_ids]
                for model in args.models.split(","):
                    if model == "finetuned" and size not in finetune_sizes:
                        continue

                    def job(model=model, task=task, subset=subset, seed=seed, true=true):
                        fitted = {}
                        if model == "forest":
                            predicted = random_forest(oral_data, task, subset, test_ids, seed)
                        elif model == "probe":
                            predicted = probe(oral_data, encoder, task, subset, test_ids)
                        else:
                            predicted, fitted = aam_fit(oral_data, encoder, task, model,
                                                        subset, test_ids, seed, args)
                        return {**score(task, true, predicted), **fitted}
                    name = model
                    if model in ("frozen", "finetuned"):
                        name += f"[{args.fit_settings}]" if args.fit_settings else ""
                        name += f"[model:{args.model_settings}]" if args.model_settings else ""
                    run(f"{task}/{size}/{name}/seed{seed}", results, args, job)
    if not args.skip_cross_sectional:
        cross_sectional(oral_data, encoder, results, args)
    write(results, args.out)
    summarize(args.out)


if __name__ == "__main__":
    main()
