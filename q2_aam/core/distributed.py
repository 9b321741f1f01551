"""Data-parallel training with torch.distributed (DDP): the pieces the engine uses.

How a step runs on W ranks (train.py): every rank draws the same shuffles and
masks (the same seeds) and collates the same *global* batch; each rank then
keeps a contiguous share of its samples (`shard_batch`) and runs the model on
them. The UniFrac loss needs every pair of the global batch, so the distance
embeddings are gathered from all ranks with their gradients (`gather_rows`)
and each rank computes the same global UniFrac loss. The other loss terms are
means over the rank's samples (or masked bases); `Shard.shares` weights them so
that DDP's average of the ranks' gradients is the one-process gradient of the
global batch:

    one process:  term = sum_r share_r * term_r   (share_r = local weight / global weight)
    rank r backward:  W * share_r * term_r        (DDP divides the sum over ranks by W)

For the UniFrac term every rank holds the whole term; the gather's backward
sums the W ranks' identical gradients, and DDP's average brings it back to one.

Outside an initialized process group everything here is the identity: one
process trains exactly as before. So it is inside `alone()`, where each rank
trains something of its own (an ensemble's members, dealt out one per rank).
"""
import contextlib
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


# Set inside alone(): this process then trains as if it were the only one.
_alone = False


def active():
    """True inside an initialized process group of more than one rank (and not alone())."""
    return (not _alone and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


@contextlib.contextmanager
def alone():
    """Within: this process trains by itself, on its own device, as one process
    does (active() is False, rank 0 of 1): no DDP, no sharded batches, no
    collectives. Everything it writes is its own, so it writes files (is_main)."""
    global _alone
    previous, _alone = _alone, True
    try:
        yield
    finally:
        _alone = previous


def dealt(n_items):
    """The items of range(n_items) this rank takes when they are dealt out:
    item k to rank k % world_size (all of them in one process)."""
    return list(range(rank(), n_items, world_size()))


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """Rank 0 (or the only process): the one that logs and writes files."""
    return rank() == 0


def main_rank_log(log=None):
    """`log` (by default: print to stderr) on the main rank, and a function that
    says nothing on the others: so a message is reported once, not once per rank."""
    if not is_main():
        return lambda message: None
    return log or (lambda message: print(message, file=sys.stderr))


def check_batch_size(batch_size, n_processes=None):
    """Refuse ranks that would never get a sample of a full batch (`n_processes`:
    this group's size, or the size of one about to be started)."""
    n_processes = world_size() if n_processes is None else n_processes
    if batch_size < n_processes:
        raise ValueError(f"batch_size ({batch_size}) is smaller than the number of processes "
                         f"({n_processes}): some ranks would have no samples. batch_size is "
                         "the global batch, shared by all processes; raise it to at least the "
                         "number of processes, or use fewer processes.")


def rank_rows(n, world):
    """The contiguous rows of an n-sample global batch that each rank runs."""
    return np.array_split(np.arange(n), world)


@dataclass
class Shard:
    """One rank's part of a global batch."""
    batch: object        # Batch of the rank's samples; `distances` stays the global matrix
    sizes: list          # every rank's sample count (0: an idle rank, see shard_batch)
    shares: dict         # loss term -> this rank's share of its global weight
    global_size: int     # samples in the global batch


def shard_batch(batch, loss_fn, rank_, world):
    """This rank's Shard of the collated global `batch` (on the CPU).

    A distinct ASV held by samples of several ranks is encoded on each of them
    (its embedding is needed there) but its masked bases count for the
    nucleotide loss on the lowest such rank only, as in one process they count
    once. A rank left without samples (a last batch smaller than the number of
    ranks) runs the first sample with every share 0, so that it still joins
    the gradient all-reduce.
    """
    rows_by_rank = rank_rows(batch.size, world)
    sizes = [len(rows) for rows in rows_by_rank]
    rows = rows_by_rank[rank_]
    run_rows = rows if len(rows) else np.arange(1)
    owner = _asv_owner(batch, rows_by_rank)
    local = _select_samples(batch, torch.from_numpy(run_rows), owner == rank_)
    shares = {"unifrac_loss": 1.0 / world}
    if len(rows) == 0:
        shares.update(nuc_loss=0.0, faith_pd_loss=0.0, target_loss=0.0)
    else:
        weights = loss_fn.sample_weights(batch)
        shares.update(faith_pd_loss=len(rows) / batch.size,
                      target_loss=float(weights[rows].sum() / weights.sum()))
        if batch.nuc_targets is not None:
            shares["nuc_loss"] = (len(local.nuc_targets) / len(batch.nuc_targets)
                                  if len(batch.nuc_targets) else 0.0)
    return Shard(local, sizes, shares, batch.size)


def _asv_owner(batch, rows_by_rank):
    """For each distinct ASV of the batch, the lowest rank with a sample holding it."""
    owner = np.full(batch.tokens.shape[0] if batch.tokens is not None
                    else batch.asv_embeddings.shape[0], len(rows_by_rank), dtype=np.int64)
    asv_index, asv_mask = batch.asv_index.numpy(), batch.asv_mask.numpy()
    for r in reversed(range(len(rows_by_rank))):
        held = asv_index[rows_by_rank[r]][asv_mask[rows_by_rank[r]]]
        owner[held] = r
    return owner


def _select_samples(batch, rows, owned):
    """The Batch of the samples `rows`, holding only the distinct ASVs they use;
    masked bases are kept as nucleotide targets on `owned` ASVs only."""
    asv_index, asv_mask = batch.asv_index[rows], batch.asv_mask[rows]
    used = torch.unique(asv_index[asv_mask])          # sorted, as the global order
    remap = torch.zeros(len(owned), dtype=torch.int64)
    remap[used] = torch.arange(len(used))
    local = replace(batch, sample_index=batch.sample_index[rows],
                    asv_index=torch.where(asv_mask, remap[asv_index], 0),
                    asv_mask=asv_mask, log_abundance=batch.log_abundance[rows])
    if batch.tokens is not None:
        local.tokens = batch.tokens[used]
    if batch.asv_embeddings is not None:
        local.asv_embeddings = batch.asv_embeddings[used]
    if batch.nuc_positions is not None:
        counts = batch.nuc_positions.sum(1).numpy()
        keep = np.zeros(len(owned), dtype=bool)
        keep[used.numpy()] = owned[used.numpy()]
        local.nuc_positions = batch.nuc_positions[used] & torch.from_numpy(keep)[used][:, None]
        local.nuc_index = torch.from_numpy(np.flatnonzero(local.nuc_positions.numpy()))
        local.nuc_targets = batch.nuc_targets[torch.from_numpy(np.repeat(keep, counts))]
    for name in ("faith_pd", "targets", "covariate_codes", "covariate_values"):
        if getattr(batch, name) is not None:
            setattr(local, name, getattr(batch, name)[rows])
    return local


def gather_rows(x, sizes):
    """Every rank's rows of `x` (sizes[r] on rank r), concatenated in rank
    order on every rank; gradients flow back to each rank's own rows."""
    from torch.distributed.nn.functional import all_gather
    longest = max(sizes)
    mine = x[:sizes[rank()]]
    padded = torch.cat([mine, mine.new_zeros(longest - len(mine), *mine.shape[1:])])
    with warnings.catch_warnings():
        # Deprecated in torch 2.13 in favour of a private module; it is the public
        # all_gather that carries gradients back to each rank.
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def sum_over_ranks(tensor):
    """In-place sum across ranks (a no-op in one process); returns `tensor`."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def first_bad_step(step):
    """The lowest non-negative step of any rank (-1 when none): so that a
    non-finite loss stops every rank, at the same point, with the same message."""
    if not active():
        return int(step)
    none = torch.iinfo(torch.int64).max
    value = torch.where(step < 0, torch.full_like(step, none), step).to(torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return -1 if int(value) == none else int(value)


def same_on_all_ranks(value):
    """Rank 0's float `value` on every rank: decisions (early stopping, the best
    epoch, a plateau schedule) are then made identically everywhere."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# How long the ranks of a patient_group wait for each other: the work each does
# alone (an ensemble member's training) may take hours, where a collective of
# the default group gives up after COLLECTIVE_TIMEOUT_S. A rank that raises or
# dies still ends the run at once (run_local; torchrun stops the others too).
PATIENT_TIMEOUT_S = 7 * 24 * 3600


@contextlib.contextmanager
def patient_group():
    """A group of every rank whose collectives wait up to PATIENT_TIMEOUT_S: for
    gathering what ranks did alone. Every rank enters it before that work."""
    group = dist.new_group(timeout=timedelta(seconds=PATIENT_TIMEOUT_S))
    yield group
    dist.destroy_process_group(group)


def gather_dealt(mine, group=None):
    """Every rank's dict {item: value} (picklable values, on the CPU) merged, on
    every rank."""
    parts = [None] * world_size()
    dist.all_gather_object(parts, mine, group=group)
    return {item: value for part in parts for item, value in part.items()}


def gather_outputs(outputs):
    """Concatenate every rank's dict of numpy arrays in rank order."""
    if not active():
        return outputs
    parts = [None] * world_size()
    dist.all_gather_object(parts, outputs)
    names = next(part.keys() for part in parts if part)
    return {name: np.concatenate([part[name] for part in parts if part]) for name in names}


def wrap(model, device):
    """`model` in DistributedDataParallel when a process group is active.

    find_unused_parameters: a fit's loss leaves the nucleotide and distance heads
    unused, as does pretraining with a loss weighted 0 or no masking, and a rank
    may leave a head unused in one step that others use (DDP then notes once per
    rank when a run used them all). Buffers (the fixed ASV whitening) are equal
    on all ranks: not synced at each forward.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # torch >= 2.13 names the buffer option forward_sync_buffers (broadcast_buffers warns).
    buffers = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=ids,
                                   find_unused_parameters=True, **buffers)


# A rank waiting on a collective gives up after this long (a peer that hangs
# without dying); peers that die or raise end the run much sooner (run_local).
COLLECTIVE_TIMEOUT_S = 600
# After a rank fails, how long the others get to stop by themselves, then again
# after SIGTERM, before SIGKILL.
GRACE_PERIOD_S = 5


class DistributedTrainingError(RuntimeError):
    pass


def train_distributed(function, n_processes, *args, **kwargs):
    """`function(*args, **kwargs)` trained data-parallel on `n_processes` local
    processes; returns the ModelBundle it returns on rank 0.

    `function` is a core training function returning a ModelBundle (pretrain.pretrain,
    supervised.fit); the TrainConfig among its arguments chooses the device: on
    CUDA one GPU per process (NCCL), on the CPU processes sharing the cores
    (gloo). batch_size stays the global batch. Workers log to stderr from rank 0
    (a `log` argument cannot cross to another process and is left out). With
    one process, `function` simply runs here.

    When a process raises or dies, the others are stopped and
    DistributedTrainingError names the rank and the cause; nothing is returned
    and no output is left.
    """
    if n_processes < 1:
        raise ValueError(f"The number of processes must be at least 1, not {n_processes}.")
    if n_processes == 1:
        return function(*args, **kwargs)
    kwargs.pop("log", None)
    cfg = _train_config(args, kwargs)
    check_batch_size(cfg.batch_size, n_processes)     # before any process starts
    backend, threads = _local_backend(cfg, n_processes)
    import tempfile
    with tempfile.TemporaryDirectory(prefix="q2-aam-ddp-") as scratch:
        out_dir = os.path.join(scratch, "model")
        run_local(_run_rank, n_processes, (os.path.join(scratch, "store"), backend, threads,
                                           function, args, kwargs, out_dir))
        from .bundle import ModelBundle
        return ModelBundle.load(out_dir)


def run_local(worker, n_processes, args):
    """worker(rank, n_processes, *args) in `n_processes` spawned processes; when
    one fails, the others are stopped (SIGTERM, then SIGKILL) and
    DistributedTrainingError says which rank failed and why."""
    import torch.multiprocessing as mp
    context = mp.start_processes(worker, args=(n_processes, *args), nprocs=n_processes,
                                 join=False, start_method="spawn")
    try:
        while not context.join(grace_period=GRACE_PERIOD_S):
            pass
    except mp.ProcessRaisedException as err:
        raise DistributedTrainingError(
            f"Training process {err.error_index} (of {n_processes}) failed, and the others "
            f"were stopped. Its error:\n{err}") from None
    except mp.ProcessExitedException as err:
        raise DistributedTrainingError(
            f"Training process {err.error_index} (of {n_processes}) ended unexpectedly "
            f"({err}); the others were stopped. A signal usually means it was killed, for "
            "example for lack of memory.") from None


def _run_rank(rank_, n_processes, store, backend, threads, function, args, kwargs, out_dir):
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank_)
    join_group(backend, init_method=f"file://{store}", rank=rank_, world_size=n_processes)
    try:
        bundle = function(*args, **kwargs)
        if rank_ == 0:
            bundle.save(out_dir)
    finally:
        leave_group()


def join_group(backend, **init):
    """Start this process's membership of the process group (`init`: the
    arguments of torch.distributed.init_process_group) and wait for every rank.

    The barrier finishes every rank's connections before any rank runs: a rank
    that then refuses its input (and exits) cannot break a peer's connecting,
    so every rank fails with the same, first, error.
    """
    dist.init_process_group(backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S), **init)
    dist.barrier()


def leave_group():
    """Destroy the process group and free it now.

    A DistributedDataParallel wrapper sits in reference cycles that keep the
    gloo group (and its worker threads) alive after destroy_process_group; left
    to interpreter shutdown, their teardown aborted the process (SIGABRT) in
    4 of 66 two-rank test runs. Collecting the cycles here ends the threads while
    Python is still whole.
    """
    import gc
    dist.destroy_process_group()
    gc.collect()


def _train_config(args, kwargs):
    from .config import TrainConfig
    found = [a for a in (*args, *kwargs.values()) if isinstance(a, TrainConfig)]
    if len(found) != 1:
        raise ValueError("train_distributed needs exactly one TrainConfig among the "
                         "arguments of the training function.")
    return found[0]


def _local_backend(cfg, n_processes):
    """('nccl' | 'gloo', threads per process) for `n_processes` on this machine."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        available = torch.cuda.device_count()
        if n_processes > available:
            raise ValueError(f"{n_processes} processes on CUDA need one GPU each; torch sees "
                             f"{available}. Use at most {available} processes, or "
                             "device='cpu'.")
        return "nccl", 1
    return "gloo", max(1, torch.get_num_threads() // n_processes)


__all__ = ["active", "alone", "dealt", "rank", "world_size", "is_main", "main_rank_log",
           "check_batch_size",
           "Shard", "shard_batch", "gather_rows", "sum_over_ranks", "first_bad_step",
           "same_on_all_ranks", "patient_group", "gather_dealt", "gather_outputs", "wrap",
           "train_distributed", "run_local", "join_group", "leave_group",
           "DistributedTrainingError"]
