"""Age regression and study classification on ../shared/data/oral-dev: q2-aam
against q2-sample-classifier's random forest and the mean/majority baseline,
on one seeded 80/20 split of the samples.

    .venv/bin/python bench/oral_supervised.py --out bench/out/oral_supervised.json

The encoder is pretrained on the training 80% only (its own 10% validation
gives held-out UniFrac R^2), so no test sample is ever seen before scoring.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.bundle import ModelBundle  # noqa: E402
from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import split_indices  # noqa: E402
from q2_aam.core.metrics import classification_metrics, regression_metrics  # noqa: E402
from q2_aam.core.pretrain import pretrain  # noqa: E402
from q2_aam.core.supervised import fit, predict  # noqa: E402

# Studies where repeated sampling of a few hosts makes age a look-up.


def random_forest(train_x, train_y, test_x, classify, seed):
    """q2-sample-classifier's estimator: scikit-learn's random forest, 500 trees."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    cls = RandomForestClassifier if classify else RandomForestRegressor
    model = cls(n_estimators=500, random_state=seed, n_jobs=-1)
    model.fit(train_x, train_y)
    return model.predict(test_x)


def relative_frequencies(table, sample_ids):
    dense = table.filter(sample_ids, axis="sample", inplace=False).matrix_data.T.toarray()
    return dense / dense.sum(1, keepdims=True)


def regression_report(true, predicted, studies):
    varying = np.array([s not in oral.LOOKUP_STUDIES for s in studies])
    report = regression_metrics(true, predicted)
    error = np.abs(predicted - true)
    report["mae_six_varying_studies"] = float(error[varying].mean())
    report["mae_by_study"] = {s: float(error[studies == s].mean()) for s in sorted(set(studies))}
    return report


def study_median_reference(age, study, train_ids, test_ids):
    """Each test sample's age predicted as its study's median training age.

    Not a fair competitor (it is told each test sample's study): it shows how
    much of an age score study identity alone buys on this data."""
    median = age[train_ids].groupby(study[train_ids]).median()
    predicted = study[test_ids].map(median).fillna(age[train_ids].median())
    return regression_report(age[test_ids].to_numpy(), predicted.to_numpy(),
                             study[test_ids].to_numpy())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--fit-epochs", type=int, default=60)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--from-scratch-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fit-learning-rate", type=float, default=None,
                        help="learning rate of the fits (default: --learning-rate)")
    parser.add_argument("--fit-patience", type=int, default=10)
    parser.add_argument("--nuc-penalty", type=float, default=1.0,
                        help="weight of the masked-nucleotide loss in pretraining")
    parser.add_argument("--unifrac-penalty", type=float, default=1.0,
                        help="weight of the UniFrac loss in pretraining (0: nucleotides only)")
    parser.add_argument("--regression-loss", default="auto", choices=["auto", "l1", "huber", "mse"],
                        help="'auto' as in the plugin: l1 with a pretrained encoder, else mse")
    parser.add_argument("--fit-with-unifrac", action="store_true",
                        help="keep the UniFrac loss as an auxiliary loss in the fits")
    parser.add_argument("--encoder-dir", default="bench/out/oral-encoder")
    parser.add_argument("--distance", default="unifrac", choices=["unifrac", "jaccard"],
                        help="what pretraining reproduces: oral-dev's unweighted UniFrac, or "
                             "the Jaccard distance of ASV presence (no phylogeny)")
    parser.add_argument("--out", default="bench/out/oral_supervised.json")
    parser.add_argument("--skip", default="", help="comma list of: rf,scratch,finetune,frozen")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    table, metadata = oral.load_table(), oral.load_metadata()
    sequences = oral.load_sequences()
    unifrac = oral.load_unifrac() if args.distance == "unifrac" else oral.jaccard(table)
    ids = [s for s in table.ids(axis="sample") if s in metadata.index]
    rng = np.random.default_rng(args.seed)
    train_idx, test_idx = split_indices(len(ids), 0.2, rng)
    train_ids, test_ids = [ids[i] for i in train_idx], [ids[i] for i in test_idx]
    age = metadata["age"]
    study = metadata["study"].astype(str)
    results = {"split": {"train": len(train_ids), "test": len(test_ids), "seed": args.seed},
               "model": {"embedding_dim": args.embedding_dim, "layers": args.layers},
               "arguments": vars(args)}

    # Baselines.
    test_age, test_study = age[test_ids].to_numpy(), study[test_ids].to_numpy()
    results["mean_baseline"] = regression_report(
        test_age, np.full(len(test_ids), age[train_ids].mean()), test_study)
    results["study_median_reference"] = study_median_reference(age, study, train_ids, test_ids)
    majority = study[train_ids].value_counts().index[0]
    results["majority_baseline"] = {"accuracy": float(np.mean(test_study == majority))}
    train_x, test_x = relative_frequencies(table, train_ids), relative_frequencies(table, test_ids)
    for task, target in (("age", age), ("study", study)):
        if "rf" in skip:
            break
        start = time.perf_counter()
        pred = random_forest(train_x, target[train_ids].to_numpy(), test_x, task == "study",
                             args.seed)
        seconds = time.perf_counter() - start
        if task == "age":
            report = regression_report(test_age, pred, test_study)
        else:
            report = classification_metrics(np.asarray(test_study, dtype=str),
                                            np.asarray(pred, dtype=str))
        results[f"random_forest_{task}"] = {**report, "seconds": seconds}
        print(task, "random forest", results[f"random_forest_{task}"], flush=True)

    def sample_set(sample_ids, model_cfg):
        return oral.sample_set(table, sequences, sample_ids, model_cfg)

    model_cfg = ModelConfig(embedding_dim=args.embedding_dim, attention_layers=args.layers)
    train_cfg = dict(batch_size=args.batch_size, learning_rate=args.learning_rate,
                     validation_fraction=0.1, random_seed=args.seed)

    # Pretrain on the training part only.
    if os.path.exists(os.path.join(args.encoder_dir, "config.json")):
        encoder = ModelBundle.load(args.encoder_dir)
        results["pretrain"] = {"loaded_from": args.encoder_dir}
    else:
        data = sample_set(train_ids, model_cfg)
        data.distances = oral.distances(unifrac, data)
        start = time.perf_counter()
        encoder = pretrain(data, model_cfg, TrainConfig(epochs=args.pretrain_epochs,
                                                        patience=args.pretrain_epochs,
                                                        nuc_penalty=args.nuc_penalty,
                                                        unifrac_penalty=args.unifrac_penalty,
                                                        **train_cfg))
        results["pretrain"] = {"seconds": time.perf_counter() - start}
        encoder.save(args.encoder_dir)
    best = encoder.history.loc[encoder.history["epoch"] == encoder.info["best_epoch"]].iloc[0]
    results["pretrain"].update({"epochs_run": int(encoder.history["epoch"].max()),
                                "best_epoch": int(encoder.info["best_epoch"]),
                                "val_unifrac_r2": float(best["val/unifrac_r2"]),
                                "val_unifrac_pearson": float(best["val/unifrac_pearson"])})
    print("pretrain", results["pretrain"], flush=True)

    variants = []
    if "frozen" not in skip:
        variants.append(("frozen", dict(encoder=encoder, freeze_encoder=True), args.fit_epochs))
    if "finetune" not in skip:
        variants.append(("finetuned", dict(encoder=encoder), args.finetune_epochs))
    if "scratch" not in skip:
        variants.append(("from_scratch", dict(), args.from_scratch_epochs))
    for name, kwargs, epochs in variants:
        for task, target in (("age", age), ("study", study)):
            start = time.perf_counter()
            data = sample_set(train_ids, model_cfg)
            if args.fit_with_unifrac:
                data.distances = oral.distances(unifrac, data)
            fit_cfg = {**train_cfg, "learning_rate": args.fit_learning_rate or args.learning_rate,
                       "patience": args.fit_patience, "regression_loss": (
                           ("l1" if "encoder" in kwargs else "mse")
                           if args.regression_loss == "auto" else args.regression_loss),
                       "unifrac_penalty": 1.0 if args.fit_with_unifrac else 0.0}
            bundle = fit(data, target[data.sample_ids].to_numpy(),
                         "regressor" if task == "age" else "classifier", model_cfg,
                         TrainConfig(epochs=epochs, nuc_mask_ratio=0.0, **fit_cfg), **kwargs)
            pred, _ = predict(bundle, sample_set(test_ids, model_cfg))
            seconds = time.perf_counter() - start
            if task == "age":
                report = regression_report(test_age, pred.astype(float), test_study)
            else:
                report = classification_metrics(np.asarray(test_study, dtype=str),
                                                 np.asarray(pred, dtype=str))
            results[f"aam_{name}_{task}"] = {**report, "seconds": seconds,
                                             "epochs_run": int(bundle.history["epoch"].max()),
                                             "best_epoch": int(bundle.info["best_epoch"])}
            print(task, name, results[f"aam_{name}_{task}"], flush=True)
            _write(results, args.out)
    _write(results, args.out)
    print(json.dumps(results, indent=2))


def _write(results, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
