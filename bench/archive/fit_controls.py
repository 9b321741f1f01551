"""Issue 6, item 5, fine-tuning half: optimizer x scheduler x learning rate for
age regression on oral-dev, scored by held-out MAE on the test 20% of
bench/oral_supervised.py's split (seed 0), with that script's pretrained
encoder (bench/out/oral-encoder, trained on the training part only) frozen, so
each run costs minutes on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/oral_supervised.py ...   # makes the encoder first
    OMP_NUM_THREADS=1 .venv/bin/python bench/archive/fit_controls.py --out bench/out/fit_controls.json
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

# Archived study: bench/ (oral.py, oral_supervised.py) and this folder are importable.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

GRID = [("adamw", s, 1e-3) for s in ("warmup_cosine", "cosine", "plateau", "onecycle",
                                      "constant")]
GRID += [("adam", "warmup_cosine", 1e-3), ("lion", "warmup_cosine", 1e-4),
         ("sgd", "warmup_cosine", 1e-2)]
GRID += [("adamw", "warmup_cosine", lr) for lr in (3e-4, 3e-3)]


def run(job):
    optimizer, scheduler, lr, epochs, encoder_dir = job
    import torch
    torch.set_num_threads(1)
    import oral
    from oral_supervised import regression_report
    from q2_aam._inputs import build_sample_set
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.config import TrainConfig
    from q2_aam.core.data import split_indices
    from q2_aam.core.supervised import fit, predict

    table, metadata, sequences = oral.load_table(), oral.load_metadata(), oral.load_sequences()
    ids = [s for s in table.ids(axis="sample") if s in metadata.index]
    train_idx, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(0))
    encoder = ModelBundle.load(encoder_dir)
    cfg = encoder.model_config

    def sample_set(idx):
        subset = table.filter([ids[i] for i in idx], axis="sample", inplace=False)
        return build_sample_set(subset, sequences, cfg.max_bp, cfg.asv_limit)

    start = time.perf_counter()
    data = sample_set(train_idx)
    bundle = fit(data, metadata["age"][data.sample_ids].to_numpy(), "regressor", cfg,
                 TrainConfig(epochs=epochs, learning_rate=lr, optimizer=optimizer,
                             scheduler=scheduler, nuc_mask_ratio=0.0, random_seed=0),
                 encoder=encoder, freeze_encoder=True, log=lambda message: None)
    test = sample_set(test_idx)
    predicted, _ = predict(bundle, test)
    report = regression_report(metadata["age"][test.sample_ids].to_numpy(),
                               predicted.astype(float),
                               metadata["study"][test.sample_ids].astype(str).to_numpy())
    return {"optimizer": optimizer, "scheduler": scheduler, "learning_rate": lr, **report,
            "best_epoch": int(bundle.info["best_epoch"]),
            "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--encoder-dir", default="bench/out/oral-encoder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/out/fit_controls.json")
    args = parser.parse_args()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(run, [(*g, args.epochs, args.encoder_dir) for g in GRID]):
            print(row, flush=True)
            rows.append(row)
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w") as fh:
                json.dump({"arguments": vars(args), "runs": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
