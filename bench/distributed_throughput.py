"""Data-parallel pretraining on oral-dev: 2 gloo processes against 1 process,
the same global batch and the same CPU threads in total (1 process x 2 threads
against 2 processes x 1 thread), the same epochs: training samples/s and the
held-out UniFrac R^2 at the end.

    .venv/bin/python bench/distributed_throughput.py --epochs 2 --repeats 2 \\
        --out bench/out/distributed_throughput.json

Each variant runs --repeats times, alternated with the other; the medians of
training samples/s are printed last.

On a GPU machine `--device cuda` runs NCCL with one GPU per process; with one
GPU, `--device cuda --processes 2` is refused (one GPU per process).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import split_indices  # noqa: E402
from q2_aam.core.distributed import train_distributed  # noqa: E402
from q2_aam.core.pretrain import pretrain  # noqa: E402


def run(processes, threads, data, model_cfg, train_cfg):
    import torch
    torch.set_num_threads(threads)
    start = time.perf_counter()
    if processes == 1:
        bundle = pretrain(data, model_cfg, train_cfg)
    else:
        bundle = train_distributed(pretrain, processes, data, model_cfg, train_cfg)
    seconds = time.perf_counter() - start
    history = bundle.history
    last = history.iloc[-1]
    n_train = len(bundle.info["train_samples"])
    return {"processes": processes, "threads_in_total": threads, "seconds": seconds,
            "train_seconds": float(history["seconds"].sum()),
            "samples_per_second": n_train * len(history) / float(history["seconds"].sum()),
            "val_unifrac_r2": float(last["val/unifrac_r2"]),
            "val_loss": float(last["val/loss"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in total")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each variant, alternated (1, 2, 1, 2, ...)")
    parser.add_argument("--out", default="bench/out/distributed_throughput.json")
    args = parser.parse_args()
    table, sequences = oral.load_table(), oral.load_sequences()
    ids = list(table.ids(axis="sample"))
    train_idx, _ = split_indices(len(ids), 0.2, np.random.default_rng(args.split_seed))
    model_cfg = ModelConfig(embedding_dim=64, attention_layers=2)
    data = oral.sample_set(table, sequences, [ids[i] for i in train_idx], model_cfg)
    data.distances = oral.distances(oral.load_unifrac(), data)
    train_cfg = TrainConfig.preset("pretrain", epochs=args.epochs, patience=args.epochs,
                                   learning_rate=1e-3, device=args.device, random_seed=0)
    # train_distributed gives each of its processes the caller's threads / processes.
    # Alternated: this machine's speed drifts within minutes.
    results = [run(processes, args.threads, data, model_cfg, train_cfg)
               for _ in range(args.repeats) for processes in (1, 2)]
    medians = {processes: float(np.median([r["samples_per_second"] for r in results
                                           if r["processes"] == processes]))
               for processes in (1, 2)}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"arguments": vars(args), "runs": results,
                   "median_samples_per_second": medians}, fh, indent=2)
    for result in results:
        print(result)
    print("median samples/s by processes:", medians)


if __name__ == "__main__":
    main()
