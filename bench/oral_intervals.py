"""Prediction intervals on oral-dev: empirical coverage of held-out ages.

    OMP_NUM_THREADS=1 .venv/bin/python bench/oral_intervals.py \\
        --encoder-dir bench/out/label-efficiency-encoder --out bench/out/oral_intervals.json

Frozen single fits at the fit defaults with the 'binned' and the 'quantile'
regression loss (look-up off) on split seed 0's training part, intervals at
0.8 and 0.9 for its held-out 20%: the share of true ages inside, the mean
width, overall and in the American Gut study (qiita-10317) alone.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.bundle import ModelBundle  # noqa: E402
from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import split_indices  # noqa: E402
from q2_aam.core.inference import predict_intervals  # noqa: E402
from q2_aam.core.supervised import fit  # noqa: E402

LEVELS = (0.8, 0.9)


def coverage(true, lower, upper):
    inside = (true >= lower) & (true <= upper)
    return {"coverage": float(inside.mean()), "mean_width": float((upper - lower).mean()),
            "n": int(len(true))}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder-dir", default="bench/out/label-efficiency-encoder")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--losses", default="binned,quantile")
    parser.add_argument("--out", default="bench/out/oral_intervals.json")
    args = parser.parse_args()
    table, sequences, metadata = oral.load_table(), oral.load_sequences(), oral.load_metadata()
    ids = [s for s in table.ids(axis="sample") if s in metadata.index]
    train_idx, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(args.split_seed))
    encoder = ModelBundle.load(args.encoder_dir)
    train = oral.sample_set(table, sequences, [ids[i] for i in train_idx], encoder.model_config)
    test = oral.sample_set(table, sequences, [ids[i] for i in test_idx], encoder.model_config)
    true = metadata["age"][test.sample_ids].to_numpy()
    american_gut = (metadata["study"][test.sample_ids] == "qiita-10317").to_numpy()
    results = {"arguments": vars(args), "fits": {}}
    for loss in args.losses.split(","):
        bundle = fit(train, metadata["age"][train.sample_ids].to_numpy(), "regressor",
                     ModelConfig.preset("fit"),
                     TrainConfig.preset("fit", regression_loss=loss, random_seed=args.seed),
                     encoder=encoder, freeze_encoder=True, lookup_neighbours=0)
        report = {}
        for level in LEVELS:
            predicted, lower, upper = predict_intervals(bundle, test, level)
            report[str(level)] = {
                "all": coverage(true, lower, upper),
                "qiita-10317": coverage(true[american_gut], lower[american_gut],
                                        upper[american_gut]),
                "mae": float(np.abs(predicted - true).mean())}
        results["fits"][loss] = report
        print(loss, json.dumps(report), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
