"""Pretraining throughput, FLOP/s against this machine's matmul peak, peak RSS,
and (with --epochs) held-out UniFrac fit, on ../shared/data/oral-dev.

    .venv/bin/python bench/pretrain_throughput.py --steps 10
    .venv/bin/python bench/pretrain_throughput.py --epochs 20 --out bench/out/pretrain.json
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import batch_indices  # noqa: E402
from q2_aam.core.losses import LossFunction  # noqa: E402
from q2_aam.core.model import AAMModel, count_parameters  # noqa: E402
from q2_aam.core.pretrain import pretrain  # noqa: E402
from q2_aam.core.train import autocast, deterministic_kernels, make_optimizer, resolve_device  # noqa: E402


def matmul_peak(device, n=2048, repeats=10):
    """Best-of-repeats FLOP/s of an n x n float32 matmul (bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, batch, loss_fn, optimizer, device):
    with autocast(device):
        losses = loss_fn(model(batch), batch)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def throughput(data, model_cfg, args, device):
    torch.manual_seed(0)
    model = AAMModel(model_cfg).to(device)
    optimizer = make_optimizer(model, TrainConfig())
    loss_fn = LossFunction("encoder")
    rng = np.random.default_rng(0)
    batches = batch_indices(np.arange(len(data)), args.batch_size, rng)
    train_step(model, data.collate(batches[0], 0.15, rng).to(device), loss_fn, optimizer,
               device)   # warm-up
    step_times, peaks, rows = [], [], []
    for i, idx in enumerate(batches[1:args.steps + 1]):
        if i % 3 == 0:          # interleave peak measurements: this machine drifts
            peaks.append(matmul_peak(device))
        batch = data.collate(idx, 0.15, rng).to(device)
        _sync(device)
        start = time.perf_counter()
        train_step(model, batch, loss_fn, optimizer, device)
        # Host time: until the step returns, without waiting for the device (a
        # wait the step forces itself counts here too). On a GPU, host time close
        # to the whole step means the device mostly waits for the host.
        host = time.perf_counter() - start
        _sync(device)
        elapsed = time.perf_counter() - start
        # FLOPs of this very batch, counted by torch's own counter in an untimed replay.
        with FlopCounterMode(display=False) as counter:
            train_step(model, batch, loss_fn, optimizer, device)
        occurrences = data.occurrences(idx)
        distinct = batch.tokens.shape[0]
        rows.append({"seconds": elapsed, "host_seconds": host, "samples": len(idx),
                     "occurrences": occurrences,
                     "distinct": distinct, "flops": counter.get_total_flops()})
        step_times.append(elapsed)
        print(f"step {i}: {elapsed:.2f}s, {len(idx) / elapsed:.1f} samples/s, "
              f"{distinct}/{occurrences} distinct ASVs", file=sys.stderr)
    samples_per_s = [r["samples"] / r["seconds"] for r in rows]
    occ_per_s = [r["occurrences"] / r["seconds"] for r in rows]
    flops_per_s = [r["flops"] / r["seconds"] for r in rows]
    return {
        "device": str(device), "parameters": count_parameters(model),
        "batch_size": args.batch_size, "steps": len(rows),
        "samples_per_s_median": statistics.median(samples_per_s),
        "step_s_median": statistics.median(r["seconds"] for r in rows),
        "host_s_per_step_median": statistics.median(r["host_seconds"] for r in rows),
        "asv_occurrences_per_s_median": statistics.median(occ_per_s),
        "distinct_asv_ratio_median": statistics.median(r["distinct"] / r["occurrences"] for r in rows),
        "model_flops_per_s_median": statistics.median(flops_per_s),
        "matmul_peak_flops_per_s_median": statistics.median(peaks),
        "fraction_of_matmul_peak": statistics.median(flops_per_s) / statistics.median(peaks),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=0, help="also pretrain and report R^2")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--nuc-penalty", type=float, default=1.0)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deterministic", action="store_true",
                        help="time the steps under deterministic kernels (training's CUDA default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    model_cfg = ModelConfig(embedding_dim=args.embedding_dim, attention_layers=args.layers)
    table = oral.load_table()
    data = oral.sample_set(table, oral.load_sequences(), table.ids(axis="sample"), model_cfg)
    data.distances = oral.distances(oral.load_unifrac(), data)
    result = {"samples": len(data), "features": len(data.feature_ids),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "embedding_dim": args.embedding_dim, "layers": args.layers}
    if args.steps:
        kernels = deterministic_kernels(device) if args.deterministic else contextlib.nullcontext()
        with kernels:
            result["throughput"] = throughput(data, model_cfg, args, device)
        result["throughput"]["deterministic"] = args.deterministic
    if args.epochs:
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, device=args.device,
                          nuc_penalty=args.nuc_penalty,
                          validation_fraction=0.1, patience=args.epochs)
        start = time.perf_counter()
        bundle = pretrain(data, model_cfg, cfg)
        best = bundle.history.loc[bundle.history["epoch"] == bundle.info["best_epoch"]].iloc[0]
        result["pretrain"] = {"epochs_run": int(bundle.history["epoch"].max()),
                              "best_epoch": bundle.info["best_epoch"],
                              "wall_seconds": time.perf_counter() - start,
                              "val_unifrac_r2": float(best["val/unifrac_r2"]),
                              "val_unifrac_pearson": float(best["val/unifrac_pearson"]),
                              "learning_rate": args.learning_rate,
                              "nuc_penalty": args.nuc_penalty}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
