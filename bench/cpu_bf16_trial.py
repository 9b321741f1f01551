"""Pretraining steps on the CPU in float32 against bf16 autocast, alternated in
one run on the same oral-dev batches; medians of the timed steps. For
reference, the same run times one matmul of the model's shape in both dtypes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cpu_bf16_trial.py --embedding-dim 64 --layers 2
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import batch_indices  # noqa: E402
from q2_aam.core.losses import LossFunction  # noqa: E402
from q2_aam.core.model import AAMModel  # noqa: E402
from q2_aam.core.optim import make_optimizer  # noqa: E402


def steps(batches, model_cfg, bf16):
    """Seconds of each step after the first, and the last loss, from seed 0."""
    torch.manual_seed(0)
    model = AAMModel(model_cfg)
    optimizer = make_optimizer(model, TrainConfig())
    loss_fn = LossFunction("encoder")
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 \
        else contextlib.nullcontext
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        with precision():
            losses = loss_fn(model(batch), batch)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return seconds[1:], float(losses["loss"].detach())


def matmul_seconds(dtype, shape=(4096, 64, 256), repeats=20):
    """Median seconds of one [m, k] @ [k, n] matmul in `dtype`."""
    m, k, n = shape
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    model_cfg = ModelConfig(embedding_dim=args.embedding_dim, attention_layers=args.layers)
    table = oral.load_table()
    data = oral.sample_set(table, oral.load_sequences(), table.ids(axis="sample"), model_cfg)
    data.distances = oral.distances(oral.load_unifrac(), data)
    rng = np.random.default_rng(0)
    batches = [data.collate(idx, 0.15, rng)
               for idx in batch_indices(np.arange(len(data)), 32, rng)[:args.steps + 1]]
    seconds, last_loss = {"float32": [], "bf16": []}, {}
    matmul = {"float32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in seconds:
            timed, last_loss[name] = steps(batches, model_cfg, name == "bf16")
            seconds[name] += timed
            matmul[name].append(matmul_seconds(torch.bfloat16 if name == "bf16"
                                               else torch.float32))
    result = {"embedding_dim": args.embedding_dim, "layers": args.layers,
              "threads": torch.get_num_threads(), "last_loss": last_loss,
              **{f"{name}_step_s_median": statistics.median(s) for name, s in seconds.items()}}
    result["bf16_speedup"] = result["float32_step_s_median"] / result["bf16_step_s_median"]
    result["bf16_matmul_speedup"] = (statistics.median(matmul["float32"])
                                     / statistics.median(matmul["bf16"]))
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
