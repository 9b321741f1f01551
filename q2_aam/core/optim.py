"""Optimizers and learning-rate schedules for the training engine.

`make_optimizer(model, cfg)` builds cfg.optimizer; `make_scheduler(optimizer, cfg,
total_steps)` builds cfg.scheduler as a schedule with two hooks:

    schedule.step_batch()                  after every optimizer step
    schedule.step_epoch(monitored_loss)    after every epoch

Every schedule counts optimizer steps (not batches: with gradient accumulation
several batches make one step), and `total_steps` is the number of optimizer steps
in the whole run, so a warmup fraction always ends inside the run.
"""
import math

import torch

from .config import TrainConfig

SGD_MOMENTUM = 0.9
LION_BETAS = (0.9, 0.99)
# One cycle, with torch's OneCycleLR defaults: the rise takes 30% of the run when
# warmup is 0, and the rate goes from peak / 25 up to the peak and down to peak / 25e4.
ONECYCLE_DEFAULT_RISE = 0.3
ONECYCLE_START, ONECYCLE_END = 1 / 25, 1 / 25e4
PLATEAU_FACTOR = 0.5            # the rate is halved at each plateau


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    Each coordinate moves by exactly lr in the direction of the sign of an
    interpolation between the gradient and its momentum; the momentum itself is
    updated with a slower beta. Weight decay is decoupled, as in AdamW. The sign
    gives every coordinate a step of the full lr, larger than Adam's usual steps,
    so Lion wants a learning rate about 3-10x smaller than AdamW's (and a weight
    decay 3-10x larger, to keep lr * weight_decay the same).
    """

    def __init__(self, params, lr=1e-4, betas=LION_BETAS, weight_decay=0.0):
        if lr <= 0:
            raise ValueError(f"Lion's learning rate must be positive; got {lr}.")
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"Lion's betas must lie in [0, 1); got {betas}.")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["momentum"] = torch.zeros_like(param)
                momentum = state["momentum"]
                param.mul_(1 - group["lr"] * group["weight_decay"])
                update = momentum.lerp(param.grad, 1 - beta1)    # beta1 * m + (1 - beta1) * g
                param.add_(update.sign_(), alpha=-group["lr"])
                momentum.lerp_(param.grad, 1 - beta2)
        return loss


def make_optimizer(model, cfg: TrainConfig):
    """cfg.optimizer over the model's trainable parameters, at cfg.learning_rate.

    Only matrices are decayed: biases and norm gains stay free. adamw and lion
    decay the weights directly (decoupled); adam and sgd add weight_decay * w to
    the gradient (an L2 penalty), which is what torch's Adam and SGD do.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.learning_rate)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=SGD_MOMENTUM,
                               nesterov=True)
    if cfg.optimizer == "lion":
        return Lion(groups, lr=cfg.learning_rate)
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}.")


# --- learning-rate multipliers: a function of the optimizer step -------------------


def warmup_steps_of(total_steps, warmup_fraction):
    return int(round(warmup_fraction * total_steps))


def cosine_between(start, end, progress):
    """From `start` (progress 0) to `end` (progress 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(total_steps, warmup_fraction):
    """LR multiplier per optimizer step: linear warmup, then cosine to zero."""
    warmup_steps = warmup_steps_of(total_steps, warmup_fraction)

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return cosine_between(1.0, 0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return factor


def warmup_constant(total_steps, warmup_fraction):
    """LR multiplier per optimizer step: linear warmup, then 1."""
    warmup_steps = warmup_steps_of(total_steps, warmup_fraction)

    def factor(step):
        return (step + 1) / warmup_steps if step < warmup_steps else 1.0
    return factor


def one_cycle(total_steps, rise_fraction):
    """LR multiplier per optimizer step: Smith's one cycle as torch's OneCycleLR draws
    it (two cosine phases, its default divisors): up from ONECYCLE_START to 1 over
    the rise, then down to ONECYCLE_END at the last step.

    Written out rather than taken from torch, whose OneCycleLR divides by zero when
    rise_fraction * total_steps is exactly 1 (warmup 0.05 over 20 steps, say).
    """
    rise_steps = warmup_steps_of(total_steps, rise_fraction)
    fall_steps = max(1, total_steps - 1 - rise_steps)

    def factor(step):
        if step < rise_steps:
            return cosine_between(ONECYCLE_START, 1.0, step / rise_steps)
        return cosine_between(1.0, ONECYCLE_END, (step - rise_steps) / fall_steps)
    return factor


# --- schedules ---------------------------------------------------------------------


class StepSchedule:
    """A rate that depends on the optimizer step only: peak rate x multiplier(step)."""

    def __init__(self, optimizer, multiplier):
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)

    def step_batch(self):
        self.scheduler.step()

    def step_epoch(self, monitored_loss):
        pass


class PlateauSchedule:
    """Linear warmup, then torch's ReduceLROnPlateau on the monitored loss.

    The rate is multiplied by PLATEAU_FACTOR whenever the monitored loss has gone
    `epochs_without_improvement` epochs without a new best. Epochs that end inside
    the warmup are not judged: the warmup would overwrite a reduction, and the
    loss is expected to move anyway while the rate is still rising.
    """

    def __init__(self, optimizer, total_steps, warmup_fraction, epochs_without_improvement):
        self.warmup_steps = warmup_steps_of(total_steps, warmup_fraction)
        self.warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_constant(total_steps, warmup_fraction))
        # threshold=0: an improvement is a new best, as for early stopping.
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR,
            patience=epochs_without_improvement - 1, threshold=0.0)
        self.steps_done = 0

    def step_batch(self):
        self.steps_done += 1
        if self.steps_done < self.warmup_steps:
            self.warmup.step()       # ends at multiplier 1 and stops, so reductions last

    def step_epoch(self, monitored_loss):
        if self.steps_done >= self.warmup_steps:
            self.plateau.step(monitored_loss)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps):
    """cfg.scheduler over a run of `total_steps` optimizer steps; the peak rate is
    cfg.learning_rate, the rate the optimizer was built with."""
    if cfg.scheduler == "warmup_cosine":
        return StepSchedule(optimizer, warmup_cosine(total_steps, cfg.warmup))
    if cfg.scheduler == "cosine":
        return StepSchedule(optimizer, warmup_cosine(total_steps, 0.0))
    if cfg.scheduler == "constant":
        return StepSchedule(optimizer, warmup_constant(total_steps, cfg.warmup))
    if cfg.scheduler == "onecycle":
        return StepSchedule(optimizer, one_cycle(total_steps, cfg.warmup or ONECYCLE_DEFAULT_RISE))
    if cfg.scheduler == "plateau":
        # A third of early stopping's patience: the rate can be halved about
        # three times before training stops.
        return PlateauSchedule(optimizer, total_steps, cfg.warmup,
                               epochs_without_improvement=max(1, cfg.patience // 3))
    raise ValueError(f"Unknown scheduler {cfg.scheduler!r}.")
