"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training
Neural Networks"), with the exponential sweep fastai made common.

A throwaway model trains for up to `steps` optimizer steps while the learning rate
grows exponentially from `min_lr` to `max_lr`, one batch per step (no gradient
accumulation). The loss is smoothed with a bias-corrected exponential moving
average; the sweep stops early once the smoothed loss exceeds DIVERGENCE_FACTOR
times the best so far, since everything beyond that point is divergence.

The suggested learning rate is the one at the lowest smoothed loss divided by 10.
The lowest point is where training is about to become unstable, so a peak rate
one decade lower sits on the falling part of the curve with a margin. It rests on
a single minimum of the smoothed curve, which makes it steadier on short, noisy
sweeps than the other common rule, the steepest descent (a derivative of a noisy
curve).
"""
import sys
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .config import ModelConfig, TrainConfig
from .data import batch_indices
from .losses import LossFunction, resolve_regression_loss
from .model import AAMModel
from .optim import make_optimizer
from .targets import TargetCodec
from .train import autocast, deterministic_kernels, resolve_device

SMOOTHING = 0.95            # EMA weight of the past: a window of ~20 steps
# The first steps' smoothed loss rests on a handful of batches: a lucky first batch
# would pass for the minimum. Like fastai and torch-lr-finder, skip the first 10
# (a fifth of a shorter sweep) when looking for the best loss.
SKIP_START = 10
DIVERGENCE_FACTOR = 4.0
SUGGESTION_DIVISOR = 10.0


@dataclass
class RangeTest:
    curve: pd.DataFrame          # step, learning_rate, loss, smoothed_loss
    suggested_learning_rate: float
    lowest_loss_learning_rate: float
    diverged: bool               # stopped early: the smoothed loss passed 4x its best


def sweep_learning_rates(min_lr, max_lr, steps):
    """`steps` rates evenly spaced on a log scale from min_lr to max_lr."""
    return np.geomspace(min_lr, max_lr, steps)


def steps_skipped(steps):
    return min(SKIP_START, steps // 5)


def suggest_learning_rate(learning_rates, smoothed_losses, min_lr, max_lr, skip):
    """(suggestion, rate at the lowest smoothed loss after the first `skip` steps): the
    suggestion is a tenth of the latter, kept inside [min_lr, max_lr]."""
    skip = min(skip, len(smoothed_losses) - 1)
    lowest = float(learning_rates[skip + int(np.argmin(smoothed_losses[skip:]))])
    return float(np.clip(lowest / SUGGESTION_DIVISOR, min_lr, max_lr)), lowest


def lr_range_test(data, targets, task, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  min_lr=1e-6, max_lr=1.0, steps=200, log=None):
    """Run the range test on all samples of `data` (left as it was) with the loss of `task`.

    'encoder': UniFrac (data.distances) and masked nucleotides, `targets` None;
    'regressor' (float targets) and 'classifier' (labels): the target loss,
    targets encoded as a fit encodes them (targets.TargetCodec), plus UniFrac
    when data.distances is set. The architecture comes from model_cfg; the
    optimizer, batch size, weight decay, gradient clipping, masking and loss
    weights from train_cfg (its learning rate and schedule are not used).
    """
    check_sweep(data, task, min_lr, max_lr, steps)
    log = log or (lambda message: print(message, file=sys.stderr))
    # A throwaway model from scratch: 'auto' resolves as a fit from scratch does.
    train_cfg = replace(train_cfg, regression_loss=resolve_regression_loss(
        train_cfg.regression_loss, pretrained=False))
    codec = None
    if task != "encoder":
        codec = TargetCodec.from_targets(task, targets,
                                         binned=train_cfg.regression_loss == "binned",
                                         quantiles=train_cfg.regression_loss == "quantile")
        data = data.replace(targets=codec.encode(targets))
    model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "task": task, "faith_pd": False,
                                       "n_outputs": 0 if codec is None else codec.n_outputs})
    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.random_seed)
    model = AAMModel(model_cfg).to(device).train()
    loss_fn = LossFunction.for_run(
        task, train_cfg, bin_centers=None if codec is None else codec.scaled_bins(),
        quantile_levels=None if codec is None else codec.quantile_tensor())
    log(f"Range test on {device}: {steps} {train_cfg.optimizer} steps of one batch of "
        f"{train_cfg.batch_size} from learning rate {min_lr:g} to {max_lr:g}.")
    rows, diverged = sweep(model, loss_fn, data, train_cfg, device,
                           sweep_learning_rates(min_lr, max_lr, steps))
    if not rows:
        raise ValueError(f"The loss was not finite even at the first learning rate "
                         f"({min_lr:g}). Check the inputs for extreme values.")
    curve = pd.DataFrame(rows)
    suggested, lowest = suggest_learning_rate(curve["learning_rate"].to_numpy(),
                                              curve["smoothed_loss"].to_numpy(), min_lr, max_lr,
                                              steps_skipped(steps))
    log(f"Lowest smoothed loss at learning rate {lowest:.3g} after {len(curve)} steps"
        f"{' (the loss diverged beyond it)' if diverged else ''}; suggested: {suggested:.3g}.")
    return RangeTest(curve, suggested, lowest, diverged)


def check_sweep(data, task, min_lr, max_lr, steps):
    if not 0 < min_lr < max_lr:
        raise ValueError(f"The sweep needs 0 < min_lr < max_lr; got min_lr={min_lr}, "
                         f"max_lr={max_lr}.")
    if steps < 2:
        raise ValueError(f"The sweep needs at least 2 steps; got {steps}.")
    if len(data) < 2:
        raise ValueError(f"The range test needs at least 2 samples; got {len(data)}.")
    if task == "encoder" and data.distances is None:
        raise ValueError("The encoder's range test needs a distance matrix.")


def sweep(model, loss_fn, data, train_cfg, device, learning_rates):
    """One optimizer step per learning rate, each on a batch of a fresh shuffle
    of all samples once the last is used up; returns (one row per step:
    step, learning_rate, loss, smoothed_loss; whether it stopped on divergence)."""
    rng = np.random.default_rng(train_cfg.random_seed)
    optimizer = make_optimizer(model, train_cfg)
    rows, average, best, batches = [], 0.0, np.inf, []
    skip = steps_skipped(len(learning_rates))
    # Deterministic on CUDA too, as train() is: the same seed, the same suggestion.
    with deterministic_kernels(device):
        for step, lr in enumerate(learning_rates):
            if not batches:
                batches = batch_indices(np.arange(len(data)), train_cfg.batch_size, rng)
            batch = data.collate(batches.pop(0), train_cfg.nuc_mask_ratio, rng).to(device)
            value = train_step(model, optimizer, loss_fn, batch, lr, train_cfg, device)
            if not np.isfinite(value):
                return rows, True
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            rows.append({"step": step + 1, "learning_rate": lr, "loss": value,
                         "smoothed_loss": smoothed})
            if step >= skip:
                best = min(best, smoothed)
            if smoothed > DIVERGENCE_FACTOR * best:
                return rows, True
    return rows, False


def train_step(model, optimizer, loss_fn, batch, lr, train_cfg, device):
    """One optimizer step at learning rate `lr`; returns the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(device):
        loss = loss_fn(model(batch), batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
    optimizer.step()
    return loss.item()     # a host sync per step: the stop rule needs the value
