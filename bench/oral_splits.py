"""q2-aam against the random forest over several seeded 80/20 splits of oral-dev.

One --split per split: first the oral_supervised.py output of that split (its
random forest and baselines), then the oral_fit_variants.py outputs scored on
it. A run is known by its variant name; NAME=PATH renames the runs of PATH to
NAME, for the same settings saved under another name on an earlier split.

    .venv/bin/python bench/oral_splits.py \
        --split bench/out/oral_supervised.json bench/out/ensemble/age_binned_e10_s0.json \
        --split bench/out/split1/oral_supervised.json bench/out/split1/age_binned_e10_s0.json

Prints, per split and averaged over the splits where each run exists: age MAE
on all held-out samples and on the six studies whose ages vary, R^2, study
accuracy and macro F1, for the forest, each run, and two references:
the mean / majority baseline and the study median (each test sample gets the
median training age of its own study: it is told the study, so it is no
competitor, but it shows how much of an age score study identity alone buys).
"""
import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402
from oral_supervised import regression_report, study_median_reference  # noqa: E402

from q2_aam.core.data import split_indices  # noqa: E402

AGE = ["mae", "mae_six_varying_studies", "r2"]
STUDY = ["accuracy", "macro_f1"]


def split_rows(paths, metadata, ids):
    """{run name: {metric: value}} for one split."""
    with open(paths[0]) as fh:
        supervised = json.load(fh)
    seed = supervised["split"]["seed"]
    # The reference is recomputed: outputs written before oral_supervised.py
    # reported it lack it.
    train_idx, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(seed))
    reference = study_median_reference(metadata["age"], metadata["study"].astype(str),
                                       [ids[i] for i in train_idx], [ids[i] for i in test_idx])
    rows = {"mean / majority baseline": {**_pick(supervised["mean_baseline"], AGE),
                                         "accuracy": supervised["majority_baseline"]["accuracy"]},
            "study median (told the study)": _pick(reference, AGE),
            "random forest": {**_pick(supervised["random_forest_age"], AGE),
                              **_pick(supervised["random_forest_study"], STUDY)}}
    for item in paths[1:]:
        rename, _, path = item.rpartition("=")
        with open(path) as fh:
            for run in json.load(fh):
                if run.get("split_seed", seed) != seed:
                    raise SystemExit(f"{path}: scored on split {run['split_seed']}, not {seed}")
                rows.setdefault(rename or run["name"], {}).update(_pick(run, AGE + STUDY))
    return seed, rows


def _pick(report, keys):
    return {k: report[k] for k in keys if k in report}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", action="append", nargs="+", required=True,
                        metavar="JSON", help="oral_supervised.py output, then runs")
    parser.add_argument("--out", default="bench/out/oral_splits.json")
    args = parser.parse_args()

    metadata = oral.load_metadata()
    ids = [s for s in oral.load_table().ids(axis="sample") if s in metadata.index]
    splits = dict(split_rows(paths, metadata, ids) for paths in args.split)
    table = pd.concat({(seed, name): pd.Series(row) for seed, rows in splits.items()
                       for name, row in rows.items()}, axis=1).T
    table.index.names = ["split", "run"]
    # Mean over splits, only for runs present on every split.
    complete = table.groupby("run").filter(lambda part: len(part) == len(splits))
    order = list(dict.fromkeys(complete.index.get_level_values("run")))
    mean = complete.groupby(level="run").mean().loc[order]
    print(table.to_string(float_format="{:.3f}".format, na_rep=""))
    print(f"\nmean over {len(splits)} splits")
    print(mean.to_string(float_format="{:.3f}".format, na_rep=""))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"per_split": {f"{s}/{n}": row.dropna().to_dict()
                                 for (s, n), row in table.iterrows()},
                   "mean": {n: row.dropna().to_dict() for n, row in mean.iterrows()}},
                  fh, indent=2)


if __name__ == "__main__":
    main()
