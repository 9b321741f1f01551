"""The training engine shared by every training action.

The optimizer and learning-rate schedule chosen in the TrainConfig (optim.py),
gradient clipping and accumulation, early stopping that restores the single best
weights, seeded shuffling and masking. Host syncs happen once per `log_every`
steps and at epoch ends, never per step.

Inside an initialized torch.distributed process group the same engine trains
data-parallel (DistributedDataParallel; distributed.py says how a global batch
is shared): every rank calls `train` with the same arguments, and all of them
end holding the same best weights. Rank 0 alone logs and writes TensorBoard
events.
"""
import contextlib
import functools
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import distributed
from .bundle import read_files
from .config import TrainConfig
from .data import batch_indices
from .optim import make_optimizer, make_scheduler

# Deterministic cuBLAS (deterministic_kernels) needs a fixed workspace, which
# cuBLAS reads once, when torch first uses it: so it is set on import.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    history: pd.DataFrame
    best_epoch: int
    best_validation: object = None          # what `evaluate` returned at the best epoch
    event_files: dict = field(default_factory=dict)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no CUDA GPU. "
                         "Use device='cpu' (or 'auto'), or install a CUDA build of torch.")
    return torch.device(name)


@contextlib.contextmanager
def autocast(device):
    """bf16 autocast on CUDA, with cuDNN attention left out; plain float32 on CPU.

    Why no cuDNN attention: it builds a plan for every new input shape, and here
    shapes change with every batch (distinct ASVs, sequence lengths). Measured on
    an H100, that planning cost ~50 ms of CPU per attention call and made
    training 3.5-4x slower than the memory-efficient kernel.
    """
    if device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(backends):
        yield


@contextlib.contextmanager
def deterministic_kernels(device):
    """On CUDA, deterministic kernels while training, so that a random_seed gives
    the same model on a GPU too (the default kernels add in a varying order:
    scatter-adds, attention backward). CPU kernels already are deterministic."""
    if device.type != "cuda":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def check_writable_directory(path, name):
    """Create directory `path` if needed and write a file there, so that a
    directory that cannot be used fails before training, in a ValueError that
    names the setting `name` it came from."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ValueError(f"{name}: cannot write TensorBoard event files to {path!r} ({reason}). "
                         f"Give a directory that can be created and written to, or leave "
                         f"{name} unset.") from err


@contextlib.contextmanager
def exit_on_sigterm():
    """While training, SIGTERM (what `kill` and job schedulers send) raises
    SystemExit, so that `with` blocks still clean up (the scratch directory of
    the event files) instead of the process dying where it stands. The previous
    handler is restored afterwards. Signal handlers live in the main thread only;
    elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class NoEventWriters:
    """What ranks other than 0 write: nothing."""

    def add_scalar(self, key, value, step):
        pass

    def close(self):
        pass

    def event_files(self):
        return {}


class EventWriters:
    """TensorBoard scalars written twice: to the run's private `scratch`
    directory, whose files (this run's alone) are kept in the model, and, when
    `live_dir` is given, to that directory for watching the run with
    `tensorboard --logdir`. Nothing is ever read back from `live_dir`: it may
    hold earlier runs and anything else."""

    def __init__(self, scratch, live_dir, log):
        from torch.utils.tensorboard import SummaryWriter
        self.scratch = scratch
        self.writers = [SummaryWriter(log_dir=scratch)]
        if live_dir:
            self.writers.append(SummaryWriter(log_dir=live_dir))
        self.log = log

    def add_scalar(self, key, value, step):
        kept, *live = self.writers
        kept.add_scalar(key, value, step)
        for writer in live:
            self._live(writer.add_scalar, key, value, step)

    def close(self):
        kept, *live = self.writers
        kept.close()
        for writer in live:
            self._live(writer.close)

    def _live(self, method, *args):
        # The live copy is a convenience: a directory that fails mid-run (full
        # disk, removed) stops it, never the training.
        try:
            method(*args)
        except Exception as err:   # the writer's thread re-raises whatever it met
            self.log(f"Stopped writing live TensorBoard files: {err}")
            self.writers = self.writers[:1]

    def event_files(self):
        return read_files(self.scratch)


def epoch_batches(indices, cfg, rng=None):
    """The training batches of one epoch: one pass over `indices` (shuffled by
    `rng`), or, when a pass makes fewer than cfg.min_epoch_steps optimizer
    steps, as many passes as reach that, each shuffled anew. A fit on a few
    dozen samples would otherwise spend its patience, and its whole learning
    rate schedule, in a few dozen steps."""
    per_pass = len(batch_indices(indices, cfg.batch_size))
    needed = cfg.min_epoch_steps * cfg.gradient_accumulation_steps
    passes = max(1, math.ceil(needed / per_pass))
    return [batch for _ in range(passes) for batch in batch_indices(indices, cfg.batch_size, rng)]


def run_epoch_losses(model, data, indices, loss_fn, cfg, device, rng, optimizer=None,
                     schedule=None, progress=None, epoch=0):
    """One epoch over `indices` (epoch_batches); trains when an optimizer (and its
    schedule) is given, else validates in one pass.

    Data-parallel, `model` is the DistributedDataParallel module when training.

    Returns the sample-weighted mean of every loss term as floats.
    """
    training = optimizer is not None
    model.train(training)
    batches = (epoch_batches(indices, cfg, rng) if training
               else batch_indices(indices, cfg.batch_size))
    sums, n_seen = {}, 0
    first_bad_step = torch.tensor(-1, device=device)
    accum = cfg.gradient_accumulation_steps
    for step, idx in enumerate(batches):
        batch = data.collate(idx, cfg.nuc_mask_ratio, rng, cfg.asv_dropout if training else 0.0,
                             cfg.covariate_unknown_rate if training else 0.0)
        optimizer_step = training and ((step + 1) % accum == 0 or step + 1 == len(batches))
        with _local_gradients(model, training and not optimizer_step):
            with torch.set_grad_enabled(training), autocast(device):
                losses, loss = batch_losses(model, batch, loss_fn, device)
            if training:
                (loss / accum).backward()
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss.detach()),
                                     step, first_bad_step)
        if optimizer_step:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            schedule.step_batch()       # the schedule counts optimizer steps
            optimizer.zero_grad(set_to_none=True)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * batch.size
        n_seen += batch.size
        if (step + 1) % cfg.log_every == 0 or step + 1 == len(batches):
            _check_finite(first_bad_step, epoch, training)
            if progress is not None:
                totals = _summed_over_ranks(sums)
                progress.set_postfix({k: f"{v / n_seen:.4f}" for k, v in totals.items()}
                                     | {"lr": f"{optimizer.param_groups[0]['lr']:.2e}"})
        if progress is not None:
            progress.update(1)
    return {name: value / n_seen for name, value in _summed_over_ranks(sums).items()}


def _local_gradients(model, local):
    """DDP's no_sync when `local` (a micro-step of gradient accumulation before
    the optimizer step): its gradients stay on the rank and add up there, so
    that the ranks all-reduce once per optimizer step. The forward pass must be
    inside too: it is where DDP prepares the all-reduce."""
    from torch.nn.parallel import DistributedDataParallel
    if local and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def batch_losses(model, batch, loss_fn, device):
    """The loss terms of the collated (global) `batch` and the loss to back-propagate.

    In one process: the terms, and their weighted sum. Data-parallel: this
    rank's share of each term (their sum over ranks is the global batch's
    term) and a loss whose gradient, averaged by DDP, is the one-process
    gradient of the global batch (distributed.py).
    """
    if not distributed.active():
        batch = batch.to(device)
        losses = loss_fn(model(batch), batch)
        return losses, losses["loss"]
    world = distributed.world_size()
    shard = distributed.shard_batch(batch, loss_fn, distributed.rank(), world)
    local = shard.batch.to(device)
    out = model(local)
    if local.distances is not None:       # every pair of the global batch
        out["distance_embeddings"] = distributed.gather_rows(out["distance_embeddings"],
                                                             shard.sizes)
    terms = loss_fn(out, local)
    shares = {name: value * shard.shares[name] for name, value in terms.items() if name != "loss"}
    shares["loss"] = sum(loss_fn.penalties[name] * value for name, value in shares.items())
    return shares, world * shares["loss"]


def _summed_over_ranks(sums):
    """Host floats of the running sums, added over ranks when data-parallel."""
    names = sorted(sums)
    if not names:
        return {}
    totals = distributed.sum_over_ranks(torch.stack([sums[name] for name in names]))
    return dict(zip(names, totals.tolist()))


def _check_finite(first_bad_step, epoch, training):
    bad = distributed.first_bad_step(first_bad_step)
    if bad >= 0:
        where = "training" if training else "validation"
        raise NonFiniteLossError(
            f"The {where} loss became non-finite (NaN or inf) at epoch {epoch}, step {bad + 1}. "
            "Try a lower learning_rate, a smaller max_grad_norm, or a longer warmup; "
            "check the inputs for extreme values.")


@dataclass
class EarlyStopping:
    """Keeps the best epoch's weights and says when `patience` epochs passed without one."""
    patience: int
    best: float = math.inf
    best_epoch: int = 0
    best_state: dict = None
    best_detail: object = None
    stale: int = 0

    def should_stop(self, value, epoch, model, detail):
        if value < self.best:
            self.best, self.best_epoch, self.best_detail, self.stale = value, epoch, detail, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.stale += 1
        return self.stale >= self.patience


def train(model, data, train_idx, val_idx, loss_fn, cfg: TrainConfig, evaluate=None,
          log=None):
    """Train `model` in place and leave it holding the best epoch's weights.

    `evaluate(model, data, val_idx, device)` -> (metrics dict, detail) adds task
    metrics (for example held-out UniFrac R^2) to each epoch's validation row;
    the detail of the best epoch is returned as `best_validation`.
    """
    main = distributed.is_main()
    log = distributed.main_rank_log(log)
    distributed.check_batch_size(cfg.batch_size)
    if cfg.tensorboard_dir and main:
        check_writable_directory(cfg.tensorboard_dir, "tensorboard_dir")
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(epoch_batches(train_idx, cfg))
    schedule = make_scheduler(optimizer, cfg, cfg.epochs * math.ceil(
        steps_per_epoch / cfg.gradient_accumulation_steps))
    monitor = "val/loss" if len(val_idx) >= 2 else "train/loss"
    _log_start(log, device, cfg, train_idx, val_idx, steps_per_epoch, monitor)
    epoch = functools.partial(_epoch_row, distributed.wrap(model, device), model, data,
                              train_idx, val_idx, loss_fn, cfg, device,
                              np.random.default_rng(cfg.random_seed), optimizer, schedule,
                              evaluate)
    from tqdm.auto import tqdm

    with exit_on_sigterm(), tempfile.TemporaryDirectory(prefix="q2-aam-") as scratch, \
            deterministic_kernels(device):
        writer = EventWriters(scratch, cfg.tensorboard_dir, log) if main else NoEventWriters()
        progress = tqdm(total=cfg.epochs * steps_per_epoch, file=sys.stderr, unit="step",
                        mininterval=1.0, dynamic_ncols=True, disable=not main)
        rows, stopping = [], EarlyStopping(cfg.patience)
        try:
            for number in range(1, cfg.epochs + 1):
                row, detail = epoch(number, progress)
                rows.append(row)
                _record(writer, log, row)
                # Rank 0's value: every rank then decides alike (the values agree anyway).
                value = distributed.same_on_all_ranks(row[monitor])
                schedule.step_epoch(value)
                if stopping.should_stop(value, number, model, detail):
                    log(f"Early stopping after epoch {number}: {monitor} has not improved "
                        f"for {cfg.patience} epochs.")
                    break
        finally:
            progress.close()
            writer.close()
        model.load_state_dict(stopping.best_state)
        log(f"Best epoch: {stopping.best_epoch} ({monitor} = {stopping.best:.4f}); its weights "
            "are kept.")
        event_files = writer.event_files()
    return TrainResult(pd.DataFrame(rows), stopping.best_epoch, stopping.best_detail,
                       event_files)


def _log_start(log, device, cfg, train_idx, val_idx, steps_per_epoch, monitor):
    where = (f"{distributed.world_size()} processes ({device} each)" if distributed.active()
             else str(device))
    passes = steps_per_epoch // len(batch_indices(train_idx, cfg.batch_size))
    per_epoch = f"{steps_per_epoch} batches per epoch" + (
        f" ({passes} passes over the training samples: min_epoch_steps)" if passes > 1 else "")
    log(f"Training on {where} ({len(train_idx)} training, {len(val_idx)} validation samples, "
        f"{per_epoch}, up to {cfg.epochs} epochs) with {cfg.optimizer} "
        f"and the {cfg.scheduler} schedule; early stopping on {monitor} with patience "
        f"{cfg.patience}.")


def _epoch_row(trained, model, data, train_idx, val_idx, loss_fn, cfg, device, rng, optimizer,
               schedule, evaluate, number, progress):
    """One epoch: train on `trained` (the model, or its DDP wrapper), then validate
    `model`. Returns the history row and the evaluation's detail (or None)."""
    start = time.perf_counter()
    progress.set_description(f"epoch {number}")
    row = {"epoch": number, "learning_rate": optimizer.param_groups[0]["lr"]}
    train_losses = run_epoch_losses(trained, data, train_idx, loss_fn, cfg, device, rng,
                                    optimizer, schedule, progress, number)
    row.update({f"train/{k}": v for k, v in train_losses.items()})
    detail = None
    if len(val_idx) >= 2:
        # A fixed generator: every epoch masks the same validation bases.
        val_rng = np.random.default_rng([cfg.random_seed, 1])
        val_losses = run_epoch_losses(model, data, val_idx, loss_fn, cfg, device, val_rng,
                                      epoch=number)
        row.update({f"val/{k}": v for k, v in val_losses.items()})
        if evaluate is not None:
            metrics, detail = evaluate(model, data, val_idx, device)
            row.update({f"val/{k}": v for k, v in metrics.items()})
    row["seconds"] = time.perf_counter() - start
    return row, detail


def _record(writer, log, row):
    for key, value in row.items():
        if "/" in key:
            writer.add_scalar(key, value, row["epoch"])
    writer.add_scalar("learning_rate", row["learning_rate"], row["epoch"])
    log(_format_row(row))


def _format_row(row):
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k}={v:.4f}" for k, v in row.items() if "/" in k]
    return "  ".join(parts) + f"  ({row['seconds']:.1f}s)"


@torch.no_grad()
def predict_outputs(model, data, indices, batch_size, device):
    """Unmasked forward pass; returns each output as a numpy array in `indices` order.

    Data-parallel, each rank runs its share of `indices` and every rank gets
    all outputs: so every rank must call this, with the same arguments.
    """
    if distributed.active():
        share = np.array_split(np.asarray(indices), distributed.world_size())[distributed.rank()]
        mine = _predict(model, data, share, batch_size, device) if len(share) else {}
        return distributed.gather_outputs(mine)
    return _predict(model, data, indices, batch_size, device)


def _predict(model, data, indices, batch_size, device):
    model.eval()
    collected = {}
    for idx in batch_indices(indices, batch_size):
        batch = data.collate(idx).to(device)
        with autocast(device):
            out = model(batch)
        for name, value in out.items():
            collected.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(parts).numpy() for name, parts in collected.items()}
