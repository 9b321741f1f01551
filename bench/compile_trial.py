"""torch.compile on the training step, against eager, on simulated data.

One pretraining step (forward, loss, backward, AdamW step) of the same model on
the same collated batches, eager and compiled (`torch.compile(model,
dynamic=True)`: batches differ in ASVs per sample, so shapes vary), the two
variants alternated over --rounds rounds of --steps steps, on the CPU or (with
--device cuda) the GPU under training's bf16 autocast. Reports the compile time
(the compiled model's first round) and the median seconds per step after it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compile_trial.py --steps 10 --rounds 3 \\
        --out bench/out/compile_trial.json
"""
import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from q2_aam.core.config import ModelConfig, TrainConfig
from q2_aam.core.data import SampleSet, batch_indices
from q2_aam.core.losses import LossFunction
from q2_aam.core.model import AAMModel
from q2_aam.core.optim import make_optimizer
from q2_aam.core.simulate import simulate
from q2_aam.core.train import autocast, resolve_device


def batches(args):
    sim = simulate(n_samples=args.samples, n_asvs=args.asvs, seq_length=100, depth=1000,
                   random_seed=0)
    data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sim.sequences.to_dict(), 150, 1024)
    data.distances = sim.unifrac.to_numpy().astype(np.float32)
    rng = np.random.default_rng(0)
    chosen = batch_indices(np.arange(len(data)), args.batch_size, rng)[:args.steps]
    return [data.collate(idx, 0.15, rng) for idx in chosen]


def timed_round(model, optimizer, loss_fn, collated, device):
    """Seconds of each step over the batches (waiting for the device)."""
    seconds = []
    for batch in collated:
        start = time.perf_counter()
        with autocast(device):
            loss = loss_fn(model(batch), batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        seconds.append(time.perf_counter() - start)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--asvs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", default="bench/out/compile_trial.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    collated = [batch.to(device) for batch in batches(args)]
    cfg = TrainConfig.preset("pretrain")
    torch.manual_seed(0)
    eager = AAMModel(ModelConfig(embedding_dim=64, attention_layers=2)).to(device)
    variants = {"eager": eager, "compiled": torch.compile(copy.deepcopy(eager), dynamic=True)}
    optimizers = {name: make_optimizer(model, cfg) for name, model in variants.items()}
    loss_fn = LossFunction("encoder")
    rounds = {name: [] for name in variants}
    for _ in range(args.rounds + 1):            # the first round compiles
        for name, model in variants.items():
            model.train()
            rounds[name].append(timed_round(model, optimizers[name], loss_fn, collated,
                                            device))
    report = {"arguments": vars(args), "device": str(device),
              "first_round_s": {name: float(sum(r[0])) for name, r in rounds.items()},
              "median_step_s": {name: float(np.median(np.concatenate(r[1:])))
                                for name, r in rounds.items()}}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
