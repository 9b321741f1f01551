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


def encode_targets(targets, task):
    """(targets as the model learns them, n_outputs): class codes for a classifier,
    z-scores for a regressor."""
    if task == "classifier":
        classes, codes = np.unique(np.asarray(targets, dtype=str), return_inverse=True)
        return codes.astype(np.int64), len(classes)
    values = np.asarray(targets, dtype=np.float64)
    return ((values - values.mean()) / (values.std() or 1.0)).astype(np.float32), 1


def lr_range_test(data, targets, task, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  min_lr=1e-6, max_lr=1.0, steps=200, log=None):
    """Run the range test on all samples of `data` with the loss of `task`.

    'encoder': UniFrac (data.distances) and masked nucleotides, `targets` None;
    'regressor' (float targets) and 'classifier' (labels): the target loss, plus
    UniFrac when data.distances is set (data.targets is set, as `fit` does). The architecture comes from model_cfg; the
    optimizer, batch size, weight decay, gradient clipping, masking and loss
    weights from train_cfg (its learning rate and schedule are not used).
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"The sweep needs 0 < min_lr < max_lr; got min_lr={min_lr}, "
                         f"max_lr={max_lr}.")
    if steps < 2:
        raise ValueError(f"The sweep needs at least 2 steps; got {steps}.")
    if len(data) < 2:
        raise ValueError(f"The range test needs at least 2 samples; got {len(data)}.")
    if task == "encoder" and data.distances is None:
        raise ValueError("The encoder's range test needs a distance matrix.")
    n_outputs = 0
    if task != "encoder":
        data.targets, n_outputs = encode_targets(targets, task)
    model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "task": task,
                                       "n_outputs": n_outputs, "faith_pd": False})
    log = log or (lambda message: print(message, file=sys.stderr))
    device = resolve_device(train_cfg.device)
    rng = np.random.default_rng(train_cfg.random_seed)
    torch.manual_seed(train_cfg.random_seed)
    model = AAMModel(model_cfg).to(device).train()
    optimizer = make_optimizer(model, train_cfg)
    # A throwaway model from scratch: 'auto' resolves as a fit from scratch does.
    train_cfg = replace(train_cfg, regression_loss=resolve_regression_loss(
        train_cfg.regression_loss, pretrained=False))
    loss_fn = LossFunction.for_run(task, train_cfg)
    log(f"Range test on {device}: {steps} {train_cfg.optimizer} steps of one batch of "
        f"{train_cfg.batch_size} from learning rate {min_lr:g} to {max_lr:g}.")

    rows, average, best, diverged = [], 0.0, np.inf, False
    skip = steps_skipped(steps)
    batches = []
    # Deterministic on CUDA too, as train() is: the same seed, the same suggestion.
    with deterministic_kernels(device):
        for step, lr in enumerate(sweep_learning_rates(min_lr, max_lr, steps)):
            if not batches:        # a fresh shuffle of all samples each pass
                batches = batch_indices(np.arange(len(data)), train_cfg.batch_size, rng)
            batch = data.collate(batches.pop(0), train_cfg.nuc_mask_ratio, rng).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device):
                loss = loss_fn(model(batch), batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
            optimizer.step()
            value = loss.item()     # a host sync per step: the stop rule needs the value
            if not np.isfinite(value):
                diverged = True
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            rows.append({"step": step + 1, "learning_rate": lr, "loss": value,
                         "smoothed_loss": smoothed})
            if step >= skip:
                best = min(best, smoothed)
            if smoothed > DIVERGENCE_FACTOR * best:
                diverged = True
                break
    if not rows:
        raise ValueError(f"The loss was not finite even at the first learning rate "
                         f"({min_lr:g}). Check the inputs for extreme values.")
    curve = pd.DataFrame(rows)
    suggested, lowest = suggest_learning_rate(curve["learning_rate"].to_numpy(),
                                              curve["smoothed_loss"].to_numpy(), min_lr, max_lr,
                                              skip)
    log(f"Lowest smoothed loss at learning rate {lowest:.3g} after {len(curve)} steps"
        f"{' (the loss diverged beyond it)' if diverged else ''}; suggested: {suggested:.3g}.")
    return RangeTest(curve, suggested, lowest, diverged)
