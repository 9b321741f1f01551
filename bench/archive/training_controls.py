"""Measured defaults for issue 6: optimizer x scheduler x learning rate for
pretraining on ../shared/data/oral-dev, each run given the same number of
epochs (all optimizers cost about the same per step, so equal epochs is an
equal wall-time budget), scored by held-out UniFrac R^2 at the kept epoch.

    OMP_NUM_THREADS=1 .venv/bin/python bench/archive/training_controls.py --workers 2 \
        --out bench/out/training_controls.json

Runs in parallel worker processes (one thread each) and also records the
learning-rate range test's suggestion for the same model.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

# Archived study: bench/ (oral.py, oral_supervised.py) and this folder are importable.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

MODEL = dict(embedding_dim=32, attention_heads=2, attention_layers=1)


def grid(base_lr):
    runs = [("adamw", s, base_lr) for s in
            ("warmup_cosine", "cosine", "plateau", "onecycle", "constant")]
    runs += [("adam", "warmup_cosine", base_lr), ("lion", "warmup_cosine", base_lr / 10),
             ("sgd", "warmup_cosine", base_lr * 10)]
    runs += [("adamw", "warmup_cosine", base_lr * f) for f in (0.1, 0.3, 3.0)]
    return runs


def load(seed):
    import oral
    from q2_aam._inputs import attach_distances, build_sample_set
    data = build_sample_set(oral.load_table(), oral.load_sequences(), 150, 1024)
    attach_distances(data, oral.load_unifrac())
    return data


def run_one(args):
    optimizer, scheduler, lr, epochs, seed, nuc_penalty = args
    import torch
    torch.set_num_threads(1)
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.pretrain import pretrain
    data = load(seed)
    start = time.perf_counter()
    bundle = pretrain(data, ModelConfig(**MODEL),
                      TrainConfig(epochs=epochs, batch_size=32, learning_rate=lr,
                                  optimizer=optimizer, scheduler=scheduler, random_seed=seed,
                                  nuc_penalty=nuc_penalty, patience=epochs,
                                  validation_fraction=0.1),
                      log=lambda message: None)
    history = bundle.history
    best = history.loc[history["epoch"] == bundle.info["best_epoch"]].iloc[0]
    return {"optimizer": optimizer, "scheduler": scheduler, "learning_rate": lr,
            "epochs": epochs, "val_unifrac_r2": float(best["val/unifrac_r2"]),
            "max_val_unifrac_r2": float(history["val/unifrac_r2"].max()),
            "seconds": time.perf_counter() - start}


def range_test(seed, nuc_penalty):
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.lr_finder import lr_range_test
    result = lr_range_test(load(seed), None, "encoder", ModelConfig(**MODEL),
                           TrainConfig(batch_size=32, nuc_penalty=nuc_penalty,
                                       random_seed=seed), steps=150, log=lambda m: None)
    return {"suggested_learning_rate": result.suggested_learning_rate,
            "lowest_loss_learning_rate": result.lowest_loss_learning_rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--base-lr", type=float, default=3e-3)
    parser.add_argument("--nuc-penalty", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/out/training_controls.json")
    args = parser.parse_args()
    results = {"model": MODEL, "arguments": vars(args),
               "range_test": range_test(args.seed, args.nuc_penalty), "runs": []}
    print(results["range_test"], flush=True)
    jobs = [(o, s, lr, args.epochs, args.seed, args.nuc_penalty) for o, s, lr in grid(args.base_lr)]
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(run_one, jobs):
            print(row, flush=True)
            results["runs"].append(row)
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
