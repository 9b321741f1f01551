"""The README's age recipe on ../shared/data/oral-dev, end to end and timed:
pretrain an encoder without labels on a split's training part, fit a binned
age ensemble on it (frozen, neighbour look-up on, as `qiime aam fit-regressor`
does by default), and predict the held-out part.

Variants (JSON objects: a name and the settings below) run one after the other
in each of --rounds rounds, so that they share the machine's drifts; each phase
is timed, and the held-out MAE recorded.

    settings: pretrain_epochs (30), fit_epochs (100), ensemble_size (10),
              threads (1: torch's CPU threads), n_devices (1: worker processes
              the ensemble's members are dealt out to, sharing the threads)

    .venv/bin/python bench/age_recipe.py --rounds 1 --out bench/out/age_recipe.json \\
        --variants '[{"name": "default"}, {"name": "two-processes", "threads": 2, "n_devices": 2}]'

Only the core's public API is used; the encoder is pretrained as
label_efficiency.py's are (64 wide, 2+2 layers, learning rate 1e-3).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oral  # noqa: E402
from label_efficiency import Oral, pretrain_encoder, split_ids, write  # noqa: E402

DEFAULTS = {"pretrain_epochs": 30, "fit_epochs": 100, "ensemble_size": 10, "threads": 1,
            "n_devices": 1}


def recipe(oral_data, train_ids, test_ids, settings, seed):
    """Seconds of each phase and the held-out errors of one run of the recipe."""
    import torch
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.distributed import train_distributed
    from q2_aam.core.metrics import regression_metrics
    from q2_aam.core.supervised import fit, predict

    torch.set_num_threads(settings["threads"])
    seconds = {}
    start = time.perf_counter()
    encoder = pretrain_encoder(oral_data, train_ids, 64, 2, settings["pretrain_epochs"], seed)
    seconds["pretrain"] = time.perf_counter() - start

    start = time.perf_counter()
    data = oral_data.sample_set(train_ids, encoder.model_config)
    ages = oral_data.metadata["age"]
    model = train_distributed(
        fit, settings["n_devices"], data, ages[data.sample_ids].to_numpy(), "regressor",
        ModelConfig.preset("fit", ensemble_size=settings["ensemble_size"]),
        TrainConfig.preset("fit", epochs=settings["fit_epochs"], regression_loss="binned",
                           random_seed=seed),
        encoder=encoder, freeze_encoder=True, lookup_neighbours=3)
    seconds["fit"] = time.perf_counter() - start

    start = time.perf_counter()
    test = oral_data.sample_set(test_ids, encoder.model_config)
    predicted, _ = predict(model, test)
    seconds["predict"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    true = ages[test.sample_ids].to_numpy()
    studies = oral_data.metadata["study"][test.sample_ids].to_numpy()
    six = ~np.isin(studies, list(oral.LOOKUP_STUDIES))
    return {"seconds": seconds, **regression_metrics(true, predicted),
            "mae_six_studies": regression_metrics(true[six], predicted[six])["mae"],
            "pretrain_val_unifrac_r2": float(encoder.history["val/unifrac_r2"].max()),
            "best_epochs": model.info["best_epoch"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default='[{"name": "default"}]')
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--out", default="bench/out/age_recipe.json")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    for variant in variants:
        unknown = set(variant) - set(DEFAULTS) - {"name"}
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")

    oral_data = Oral()
    train_ids, test_ids = split_ids(oral_data, args.split_seed)
    results = {"arguments": vars(args), "runs": []}
    for round_ in range(args.rounds):
        for variant in variants:
            settings = {**DEFAULTS, **variant}
            report = recipe(oral_data, train_ids, test_ids, settings, args.seed)
            results["runs"].append({"round": round_, "variant": variant["name"],
                                    "settings": settings, **report})
            print(json.dumps(results["runs"][-1]), flush=True)
            write(results, args.out)


if __name__ == "__main__":
    main()
