"""Fit variants on oral-dev's seeded 80/20 split (the split of oral_supervised.py)
and score each on the held-out 20%: a quick way to compare fit settings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/oral_fit_variants.py --task age \
        --variants '[{"name": "l1", "regression_loss": "l1"}, {"name": "mse", "regression_loss": "mse"}]'

Each variant is a dict of TrainConfig fields plus: name (required), freeze
(default true: frozen encoder), unifrac (keep the UniFrac loss as auxiliary),
class_weights (classifier), whiten (default true; false is an ablation that
leaves the ASV whitening at identity), ridge (the whitening's ridge, default
1e-3), ensemble_size (default 1), lookup_neighbours (default 0: off; the
plugin's default is 3), kmer_size (the fit's k-mer embeddings, default 0 here:
the plugin's default is 6), dropout (default 0) and covariates (a list of
metadata columns, e.g. ["study"], given to the fit and to predict as
covariates; default none). asv_dropout, a TrainConfig field, also
defaults to 0 here (the plugin's fits default to 0.5), so the earlier commands
in BENCHMARKS.md keep their meaning. Every fit starts from the pretrained
encoder in --encoder-dir (oral_supervised.py writes it). Test predictions of
each variant go to <out without .json>/<task>_<name>.tsv, so variants can be
compared per sample or averaged.
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
from oral_supervised import regression_report  # noqa: E402

from q2_aam.core.bundle import ModelBundle  # noqa: E402
from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import split_indices  # noqa: E402
from q2_aam.core.metrics import classification_metrics  # noqa: E402
from q2_aam.core.supervised import fit, predict  # noqa: E402
from q2_aam.core.transfer import WHITENING_RIDGE  # noqa: E402

DEFAULTS = dict(epochs=100, batch_size=32, learning_rate=3e-4, validation_fraction=0.1,
                random_seed=0, patience=20, nuc_mask_ratio=0.0,
                regression_loss="l1")   # the plugin's choice for a pretrained encoder


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["age", "study"], required=True)
    parser.add_argument("--variants", required=True, help="JSON list of dicts (see above)")
    parser.add_argument("--encoder-dir", default="bench/out/oral-encoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split")
    parser.add_argument("--out", default="bench/out/oral_fit_variants.json")
    parser.add_argument("--verbose", action="store_true", help="print each epoch's summary")
    args = parser.parse_args()

    table, metadata = oral.load_table(), oral.load_metadata()
    sequences = oral.load_sequences()
    ids = [s for s in table.ids(axis="sample") if s in metadata.index]
    train_idx, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(args.seed))
    encoder = ModelBundle.load(args.encoder_dir)
    cfg = encoder.model_config

    train_data = oral.sample_set(table, sequences, [ids[i] for i in train_idx], cfg)
    test_data = oral.sample_set(table, sequences, [ids[i] for i in test_idx], cfg)
    study = metadata["study"].astype(str)
    target = metadata["age"] if args.task == "age" else study
    test_study = study[test_data.sample_ids].to_numpy()
    unifrac = None
    predictions_dir = os.path.splitext(args.out)[0]
    os.makedirs(predictions_dir, exist_ok=True)
    results = []
    for variant in json.loads(args.variants):
        variant = dict(variant)
        name = variant.pop("name")
        freeze = variant.pop("freeze", True)
        class_weights = variant.pop("class_weights", "none")
        whiten = variant.pop("whiten", True)
        ridge = variant.pop("ridge", WHITENING_RIDGE)
        lookup_neighbours = variant.pop("lookup_neighbours", 0)
        covariates = covariate_frame(metadata, variant.pop("covariates", []))
        fit_cfg = ModelConfig.from_dict({**cfg.to_dict(), "kmer_size": variant.pop("kmer_size", 0),
                                         "dropout": variant.pop("dropout", 0.0),
                                         "ensemble_size": variant.pop("ensemble_size", 1)})
        train_data.distances = None
        if variant.pop("unifrac", False):
            unifrac = oral.load_unifrac() if unifrac is None else unifrac
            train_data.distances = oral.distances(unifrac, train_data)
        train_cfg = TrainConfig(**{**DEFAULTS, **variant,
                                   "unifrac_penalty": 1.0 if train_data.distances is not None
                                   else 0.0})
        start = time.perf_counter()
        extra = ({"lookup_neighbours": lookup_neighbours} if args.task == "age"
                 else {"class_weights": class_weights})
        bundle = fit(train_data, target[train_data.sample_ids].to_numpy(),
                     "regressor" if args.task == "age" else "classifier", fit_cfg, train_cfg,
                     encoder=encoder, freeze_encoder=freeze,
                     whitening_ridge=ridge if whiten else None,
                     log=None if args.verbose else (lambda message: None),
                     covariates=covariates, **extra)
        predicted, _ = predict(bundle, test_data, covariates=covariates)
        seconds = time.perf_counter() - start
        truth = target[test_data.sample_ids].to_numpy()
        if args.task == "age":
            report = regression_report(truth, predicted.astype(float), test_study)
        else:
            report = classification_metrics(np.asarray(truth, dtype=str),
                                            np.asarray(predicted, dtype=str))
        history = bundle.history
        # An ensemble: one history and best epoch per member, losses averaged over them.
        best_epochs = np.atleast_1d(bundle.info["best_epoch"]).tolist()
        members = ([history] if "member" not in history
                   else [part for _, part in history.groupby("member")])
        bests = pd.DataFrame([part.loc[part["epoch"] == epoch].iloc[0]
                              for part, epoch in zip(members, best_epochs)])
        report.update(name=name, split_seed=args.seed, variant=variant,
                      covariates=[] if covariates is None else list(covariates.columns),
                      kmer_size=fit_cfg.kmer_size, ensemble_size=fit_cfg.ensemble_size,
                      freeze=freeze, whiten=whiten, ridge=ridge,
                      neighbour_lookup=bundle.info.get("neighbour_lookup"),
                      seconds=round(seconds, 1),
                      best_epoch=best_epochs if len(best_epochs) > 1 else best_epochs[0],
                      epochs_run=[int(part["epoch"].max()) for part in members],
                      train_target_loss=float(bests["train/target_loss"].mean()),
                      val_target_loss=float(bests.get("val/target_loss", pd.Series([np.nan]))
                                            .mean()))
        pd.DataFrame({"true": truth, "predicted": predicted, "study": test_study},
                     index=pd.Index(test_data.sample_ids, name="sample_id")).to_csv(
            os.path.join(predictions_dir, f"{args.task}_{name}.tsv"), sep="\t")
        print(json.dumps({k: v for k, v in report.items() if k != "mae_by_study"}), flush=True)
        results.append(report)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


def covariate_frame(metadata, columns):
    """The metadata `columns` as covariates (text columns categorical), or None."""
    if not columns:
        return None
    frame = metadata[list(columns)].copy()
    for name in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = frame[name].astype(str)
    return frame


if __name__ == "__main__":
    main()
