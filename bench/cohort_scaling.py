"""Pretraining cost against cohort size, on simulated cohorts (no downloads).

For each cohort size, and each way of giving the UniFrac targets, reports peak
RSS, seconds per pretraining epoch (timed over --batches training steps and
extrapolated to the epoch's steps), and the share of step time spent getting
each batch's distances:

    tree    UniFrac computed per batch from the tree (unifrac.TreeDistances)
    matrix  a full N x N float32 matrix held in memory (what a DistanceMatrix
            input gives); exact UniFrac up to --exact-full-max samples, beyond
            that (up to --full-max) stand-in values of the same size, which cost
            the same time and memory; larger N is left out (N^2 does not fit).

Each (size, way) runs in a fresh process, so peak RSS is its own.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cohort_scaling.py --sizes 2000 --batches 5
    .venv/bin/python bench/cohort_scaling.py --sizes 2000 20000 100000 --model default \
        --out bench/out/cohort_scaling.json
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MODELS = {"tiny": dict(embedding_dim=16, attention_heads=2, attention_layers=1),
          "default": {}}


class TimedSource:
    """A distance source that adds up the time its inner source takes."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __len__(self):
        return len(self.inner)

    def submatrix(self, indices):
        start = time.perf_counter()
        block = self.inner.submatrix(indices)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return block


def stand_in_matrix(n, rng, block=4096):
    """[n, n] symmetric float32 values in [0, 1], zero diagonal, filled in blocks."""
    matrix = np.empty((n, n), dtype=np.float32)
    for i in range(0, n, block):
        for j in range(i, n, block):
            values = rng.random((min(block, n - i), min(block, n - j)), dtype=np.float32)
            matrix[i:i + block, j:j + block] = values
            matrix[j:j + block, i:i + block] = values.T
    np.fill_diagonal(matrix, 0.0)
    return matrix


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def run_one(args):
    """One cohort size and one way of giving distances, in this process."""
    import torch
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.data import SampleSet, batch_indices, split_indices
    from q2_aam.core.losses import LossFunction
    from q2_aam.core.model import AAMModel
    from q2_aam.core.optim import make_optimizer
    from q2_aam.core.pretrain import MAX_VALIDATION_SAMPLES
    from q2_aam.core.simulate import simulate_cohort
    from q2_aam.core.train import autocast, resolve_device
    from q2_aam.core.unifrac import DenseDistances, TreeDistances

    n = args.one
    result = {"n_samples": n, "distances": args.way, "n_asvs": args.n_asvs,
              "model": args.model, "metric": args.metric, "batch_size": args.batch_size}
    start = time.perf_counter()
    cohort = simulate_cohort(n_samples=n, n_asvs=args.n_asvs, asvs_per_sample=(50, 300),
                             random_seed=args.seed)
    result["simulate_s"] = time.perf_counter() - start
    result["nonzero_counts"] = int(cohort.counts.nnz)

    model_cfg = ModelConfig(**MODELS[args.model])
    start = time.perf_counter()
    data = SampleSet(cohort.counts, cohort.sample_ids, cohort.feature_ids,
                     cohort.sequences.to_dict(), model_cfg.max_bp, model_cfg.asv_limit)
    result["sample_set_s"] = time.perf_counter() - start
    train_cfg = TrainConfig(batch_size=args.batch_size, device=args.device)
    rng = np.random.default_rng(args.seed)
    train_idx, val_idx = split_indices(n, train_cfg.validation_fraction, rng)

    start = time.perf_counter()
    if args.way == "tree":
        source = TreeDistances(cohort.tree, data.feature_ids, data.counts, args.metric)
        result["tree_index_s"] = time.perf_counter() - start
        # What evaluate_unifrac computes once per run: the capped validation block.
        subset = val_idx[:MAX_VALIDATION_SAMPLES]
        start = time.perf_counter()
        source.submatrix(subset)
        result["validation_block_s"] = time.perf_counter() - start
        result["validation_block_samples"] = len(subset)
    elif n <= args.exact_full_max:
        matrix = TreeDistances(cohort.tree, data.feature_ids, data.counts,
                               args.metric).submatrix(np.arange(n))
        source = DenseDistances(matrix)
        result["full_matrix_s"] = time.perf_counter() - start
        result["matrix_values"] = "exact"
    else:
        source = DenseDistances(stand_in_matrix(n, rng))
        result["full_matrix_s"] = None
        result["matrix_values"] = "stand-in (same size; time and memory only)"
    timed = TimedSource(source)
    data.distances = timed

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = AAMModel(model_cfg).to(device)
    optimizer = make_optimizer(model, train_cfg)
    loss_fn = LossFunction("encoder")
    batches = batch_indices(train_idx, args.batch_size, rng)
    steps, seconds = 0, 0.0
    for i, idx in enumerate(batches[:args.batches + 1]):
        if i == 1:                                   # the first step warms up; not counted
            timed.seconds, timed.calls, start = 0.0, 0, time.perf_counter()
        batch = data.collate(idx, train_cfg.nuc_mask_ratio, rng).to(device)
        model.train()
        with autocast(device):
            losses = loss_fn(model(batch), batch)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(losses["loss"])                        # wait for the device
        if i >= 1:
            steps += 1
    seconds = time.perf_counter() - start
    result.update(timed_steps=steps, step_s=seconds / steps,
                  distance_s_per_step=timed.seconds / steps,
                  distance_share=timed.seconds / seconds,
                  steps_per_epoch=len(batches), epoch_s=seconds / steps * len(batches),
                  peak_rss_mb=peak_rss_mb())
    print(json.dumps(result), flush=True)


def run_all(args):
    rows = []
    for n in args.sizes:
        for way in ("tree", "matrix"):
            if way == "matrix" and n > args.full_max:
                rows.append({"n_samples": n, "distances": way,
                             "skipped": f"N x N float32 is {4 * n * n / 2**30:.0f} GiB"})
                continue
            command = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--way", way]
            for name in ("n_asvs", "model", "metric", "batch_size", "batches", "seed",
                         "device", "exact_full_max"):
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            try:
                done = subprocess.run(command, capture_output=True, text=True,
                                      timeout=args.time_limit)
            except subprocess.TimeoutExpired:
                rows.append({"n_samples": n, "distances": way,
                             "skipped": f"over --time-limit {args.time_limit} s"})
                continue
            if done.returncode != 0:
                rows.append({"n_samples": n, "distances": way,
                             "skipped": "failed: " + done.stderr.strip().splitlines()[-1]})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


def table(rows):
    lines = ["| samples | distances | peak RSS (MB) | s / epoch | s / step | distance ms / step "
             "| distance share | setup s (simulate / sample set / distances) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n_samples']:,} | {r['distances']} | - | - | - | - | - | "
                         f"left out: {r['skipped']} |")
            continue
        setup = r.get("tree_index_s", r.get("full_matrix_s"))
        setup = "stand-in" if setup is None else f"{setup:.1f}"
        if r["distances"] == "tree":
            setup += f" (+ {r['validation_block_s']:.1f} validation block)"
        lines.append(
            f"| {r['n_samples']:,} | {r['distances']} | {r['peak_rss_mb']:.0f} | "
            f"{r['epoch_s']:.0f} | {r['step_s']:.3f} | {1e3 * r['distance_s_per_step']:.1f} | "
            f"{100 * r['distance_share']:.1f}% | {r['simulate_s']:.1f} / {r['sample_set_s']:.1f} / "
            f"{setup} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--n-asvs", type=int, default=100000, help="tips of the tree")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--metric", choices=["unweighted", "weighted_normalized"],
                        default="unweighted")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="training steps timed per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-max", type=int, default=20000,
                        help="largest N given a full matrix")
    parser.add_argument("--exact-full-max", type=int, default=2000,
                        help="largest N whose full matrix holds exact UniFrac")
    parser.add_argument("--time-limit", type=float, default=3600,
                        help="seconds allowed per (size, distances) run")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=["tree", "matrix"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
