"""Data-parallel training (q2_aam.core.distributed) on CPU with gloo.

Worker processes are started here with torch.multiprocessing; each runs with
one thread. The one-process reference runs in the test process itself.
"""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from q2_aam.core import distributed, losses as losses_module
from q2_aam.core.config import ModelConfig
from q2_aam.core.data import SampleSet
from q2_aam.core.losses import LossFunction
from q2_aam.core.model import AAMModel
from q2_aam.core.simulate import simulate
from q2_aam.core.train import _summed_over_ranks, batch_losses

CPU = torch.device("cpu")
TINY = dict(embedding_dim=16, attention_heads=2, attention_layers=1)
# float32 sums over the same terms in a different order (per-rank partial
# gradients added by the all-reduce): agreement to about 1e-6 relative is exact
# arithmetic; the bound leaves room for cancellation in small components.
RTOL, ATOL = 1e-4, 1e-6


def tiny_data(n_samples=12):
    sim = simulate(n_samples=n_samples, n_asvs=20, seq_length=60, depth=300, random_seed=3)
    data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sim.sequences.to_dict(), 60, 64)
    data.distances = sim.unifrac.to_numpy().astype(np.float32)
    data.faith_pd = np.random.default_rng(0).normal(size=n_samples).astype(np.float32)
    return data, sim


def one_step(case):
    """Loss terms and gradients of one training step on a fixed global batch:
    in one process, or (inside a process group) data-parallel."""
    data, sim = tiny_data()
    batch_rows = case.get("rows", [0, 1, 2, 3, 4, 5, 6])       # 7: shares 4 + 3 on 2 ranks
    model_cfg = dict(TINY, faith_pd=case["task"] == "encoder", task=case["task"],
                     n_outputs=case.get("n_outputs", 0), kmer_size=case.get("kmer_size", 0))
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**model_cfg))
    class_weights = None
    if case["task"] == "classifier":
        data.distances = None
        data.targets = (np.arange(len(data)) % 3).astype(np.int64)
        class_weights = torch.tensor([0.5, 1.0, 2.5])
    if case["task"] == "regressor":
        data.targets = np.linspace(-1, 1, len(data)).astype(np.float32)
    if case.get("frozen"):
        data.asv_embedding_table = torch.randn(len(data.feature_ids), 16,
                                               generator=torch.Generator().manual_seed(1))
        model.asv_encoder.requires_grad_(False)
    loss_fn = LossFunction(case["task"], class_weights=class_weights,
                           regression_loss=case.get("regression_loss", "mse"))
    rng = np.random.default_rng(5)
    batch = data.collate(np.array(batch_rows), case.get("mask", 0.0), rng,
                         case.get("dropout", 0.0))

    pairs = []
    unifrac = losses_module.unifrac_loss

    def counting_unifrac(embeddings, true, weight):
        n = embeddings.shape[0]
        pairs.append(int(np.triu(np.ones((n, n)), 1).sum()))
        return unifrac(embeddings, true, weight)

    losses_module.unifrac_loss = counting_unifrac
    try:
        trained = distributed.wrap(model, CPU)
        trained.train()
        terms, loss = batch_losses(trained, batch, loss_fn, CPU)
        loss.backward()
    finally:
        losses_module.unifrac_loss = unifrac
    return {"terms": _summed_over_ranks({k: v.detach() for k, v in terms.items()}),
            "grads": {name: None if p.grad is None else p.grad.clone()
                      for name, p in model.named_parameters()},
            "pairs": pairs, "batch_size": batch.size}


def _worker(rank, world, store, job, args, out_path):
    torch.set_num_threads(1)
    distributed.join_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = job(*args)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        distributed.leave_group()


def run_ranks(tmp_path, world, job, *args):
    """`job(*args)` on `world` gloo ranks; rank 0's return value."""
    os.environ["OMP_NUM_THREADS"] = "1"         # inherited by the workers
    out_path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), job, args, out_path),
             nprocs=world, join=True)
    return torch.load(out_path, weights_only=False)


CASES = {
    "pretrain: UniFrac + masked bases + Faith PD":
        dict(task="encoder", mask=0.3),
    "weighted classifier with ASV dropout and k-mers, no distances":
        dict(task="classifier", n_outputs=3, dropout=0.5, kmer_size=3),
    "frozen-encoder huber regressor":
        dict(task="regressor", n_outputs=1, frozen=True, regression_loss="huber"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_give_the_one_process_loss_and_gradients(tmp_path, name):
    case = CASES[name]
    single = one_step(case)
    parallel = run_ranks(tmp_path, 2, one_step, case)
    assert single["terms"].keys() == parallel["terms"].keys()
    for term, value in single["terms"].items():
        assert parallel["terms"][term] == pytest.approx(value, rel=RTOL, abs=ATOL), term
    assert single["grads"].keys() == parallel["grads"].keys()
    for param, grad in single["grads"].items():
        other = parallel["grads"][param]
        # Parameters the loss leaves unused keep no gradient, as in one process
        # (AdamW would otherwise decay them).
        assert (grad is None) == (other is None), param
        if grad is not None:
            torch.testing.assert_close(other, grad, rtol=RTOL, atol=ATOL, msg=param)
    if case["task"] == "encoder":
        n = single["batch_size"]
        assert single["pairs"] == parallel["pairs"] == [n * (n - 1) // 2]


def test_a_rank_without_samples_still_gives_the_one_process_gradient(tmp_path):
    """Three ranks, a global batch of two: the third runs with zero weight."""
    case = dict(task="encoder", mask=0.3, rows=[2, 9])
    single = one_step(case)
    parallel = run_ranks(tmp_path, 3, one_step, case)
    for term, value in single["terms"].items():
        assert parallel["terms"][term] == pytest.approx(value, rel=RTOL, abs=ATOL), term
    for param, grad in single["grads"].items():
        if grad is not None:
            torch.testing.assert_close(parallel["grads"][param], grad, rtol=RTOL, atol=ATOL,
                                       msg=param)
    assert parallel["pairs"] == [1]


def test_shards_count_a_shared_asv_once():
    data, _ = tiny_data()
    batch = data.collate(np.arange(7), 0.3, np.random.default_rng(5))
    loss_fn = LossFunction("encoder")
    shards = [distributed.shard_batch(batch, loss_fn, r, 2) for r in range(2)]
    assert [s.batch.size for s in shards] == [4, 3]
    assert sum(len(s.batch.nuc_targets) for s in shards) == len(batch.nuc_targets)
    assert sum(s.shares["nuc_loss"] for s in shards) == pytest.approx(1.0)
    # Some ASVs are held by samples of both ranks: encoded on both, counted once.
    rows = [np.arange(4), np.arange(4, 7)]
    held = [set(batch.asv_index[r][batch.asv_mask[r]].tolist()) for r in rows]
    assert held[0] & held[1]
    assert [s.batch.tokens.shape[0] for s in shards] == [len(h) for h in held]


# --- local launcher ---------------------------------------------------------------

def short_config(**kw):
    from q2_aam.core.config import TrainConfig
    base = dict(epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.25,
                device="cpu", random_seed=0)
    return TrainConfig(**{**base, **kw})


def quiet(message):
    pass


# Not exact: the ranks add their partial gradients in another order than one
# process sums them (float32 rounding, ~1e-7 relative per step), and training
# carries such differences into every later step. Adam amplifies them most: its
# first steps move every weight by about the learning rate in the direction of
# the gradient's sign, so round-off-sized gradients can move either way (seen:
# 1e-2 on embeddings of size 0.5 after six AdamW steps). Pretraining is checked
# with SGD, where the differences stay at round-off; the fit keeps AdamW.
PARITY_ATOL = 1e-3


def test_two_process_pretraining_matches_one_process():
    from q2_aam.core.pretrain import pretrain
    from q2_aam.core.supervised import embed
    data, _ = tiny_data(24)
    cfg = short_config(optimizer="sgd", learning_rate=0.05)
    single = pretrain(tiny_data(24)[0], ModelConfig(**TINY), cfg, log=quiet)
    parallel = distributed.train_distributed(pretrain, 2, data, ModelConfig(**TINY),
                                             cfg, log=quiet)
    assert parallel.info["best_epoch"] == single.info["best_epoch"]
    np.testing.assert_allclose(parallel.history["val/loss"], single.history["val/loss"],
                               rtol=1e-4)
    assert list(parallel.validation.columns) == list(single.validation.columns)
    assert len(parallel.validation) == len(single.validation)
    a = embed(single, data, device="cpu")[1]
    b = embed(parallel, data, device="cpu")[1]
    np.testing.assert_allclose(b, a, atol=PARITY_ATOL)
    assert len(parallel.event_files) == len(single.event_files) == 1     # rank 0's only


def test_two_process_fit_matches_one_process():
    from q2_aam.core.supervised import fit, predict
    data, sim = tiny_data(24)
    ages = sim.metadata["age"].to_numpy()
    cfg = short_config(epochs=3, learning_rate=3e-4, asv_dropout=0.5, nuc_mask_ratio=0.0)
    model_cfg = ModelConfig(**TINY, kmer_size=3)
    single = fit(tiny_data(24)[0], ages, "regressor", model_cfg, cfg, log=quiet)
    parallel = distributed.train_distributed(fit, 2, data, ages, "regressor", model_cfg, cfg,
                                             log=quiet)
    assert parallel.info["best_epoch"] == single.info["best_epoch"]
    a, _ = predict(single, data, device="cpu")
    b, _ = predict(parallel, data, device="cpu")
    np.testing.assert_allclose(b, a, atol=PARITY_ATOL * single.info["target_scaling"]["std"])


def fail_on_rank_one(*args, **kwargs):
    from q2_aam.core.pretrain import pretrain
    if dist.get_rank() == 1:
        raise RuntimeError("rank one is broken")
    return pretrain(*args, **kwargs)


def killed_on_rank_one(*args, **kwargs):
    import signal
    import threading
    from q2_aam.core.pretrain import pretrain
    if dist.get_rank() == 1:
        threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return pretrain(*args, **kwargs)


@pytest.mark.parametrize("job, message", [(fail_on_rank_one, "rank one is broken"),
                                          (killed_on_rank_one, "SIGKILL")])
def test_a_failing_rank_ends_the_run_with_an_error(monkeypatch, tmp_path, job, message):
    import time
    monkeypatch.setattr(distributed.tempfile if hasattr(distributed, "tempfile") else
                        __import__("tempfile"), "tempdir", str(tmp_path))
    data, _ = tiny_data(24)
    start = time.monotonic()
    with pytest.raises(distributed.DistributedTrainingError, match="process 1") as err:
        distributed.train_distributed(job, 2, data, ModelConfig(**TINY),
                                      short_config(epochs=1000, patience=1000))
    assert message in str(err.value)
    assert time.monotonic() - start < 60
    assert not any(p.name.startswith("q2-aam-ddp-") for p in tmp_path.iterdir())


def test_more_processes_than_samples_per_batch_are_refused(tmp_path):
    from q2_aam.core.pretrain import pretrain
    data, _ = tiny_data(12)
    refusal = r"batch_size \(2\) is smaller than the number of processes \(3\)"
    with pytest.raises(ValueError, match=refusal):          # before starting processes
        distributed.train_distributed(pretrain, 3, data, ModelConfig(**TINY),
                                      short_config(batch_size=2))
    # and by the engine itself, for processes started otherwise (torchrun)
    with pytest.raises(distributed.DistributedTrainingError, match=refusal):
        distributed.run_local(_refusing_rank, 3, (str(tmp_path / "store"),))


def _refusing_rank(rank, world, store):
    from q2_aam.core.pretrain import pretrain
    torch.set_num_threads(1)
    distributed.join_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        pretrain(tiny_data(12)[0], ModelConfig(**TINY), short_config(batch_size=2), log=quiet)
    finally:
        distributed.leave_group()


# --- ensembles, the ASV embedding pass and gradient accumulation ----------------

@pytest.fixture
def one_thread():
    """Members trained alone on a rank are compared bit for bit with one process:
    the same thread count in both (train_distributed gives each worker its share)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_encoder():
    from q2_aam.core.pretrain import pretrain
    return pretrain(tiny_data(24)[0], ModelConfig(**TINY), short_config(epochs=1), log=quiet)


@pytest.mark.parametrize("n_members, frozen", [(2, False), (3, True)])
def test_ensemble_members_train_one_per_rank_as_in_one_process(one_thread, capfd, tmp_path,
                                                                n_members, frozen):
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.supervised import fit
    data, sim = tiny_data(24)
    ages = sim.metadata["age"].to_numpy()
    model_cfg = ModelConfig(**TINY, ensemble_size=n_members)
    transfer = dict(encoder=tiny_encoder(), freeze_encoder=True) if frozen else {}
    single = fit(tiny_data(24)[0], ages, "regressor", model_cfg, short_config(epochs=3),
                 log=quiet, **transfer)
    single.save(str(tmp_path / "single"))      # as train_distributed returns rank 0's model
    single = ModelBundle.load(str(tmp_path / "single"))
    capfd.readouterr()
    parallel = distributed.train_distributed(fit, 2, data, ages, "regressor", model_cfg,
                                             short_config(epochs=3), **transfer)
    logged = capfd.readouterr().err
    # Each member trained alone, as in one process: the very same weights.
    assert single.state_dict.keys() == parallel.state_dict.keys()
    for name, value in single.state_dict.items():
        assert torch.equal(parallel.state_dict[name], value), name
    columns = [c for c in single.history.columns if c != "seconds"]
    assert single.history[columns].equals(parallel.history[columns])
    assert single.validation.equals(parallel.validation)
    assert parallel.info["best_epoch"] == single.info["best_epoch"]
    # Dealt out, member k to process k % 2 (TensorBoard names its files by process ID)...
    writers = {name.split("/")[0]: name.split(".")[-2] for name in parallel.event_files}
    assert sorted(writers) == sorted(name.split("/")[0] for name in single.event_files)
    assert len({writers["member1"], writers["member2"]}) == 2
    if n_members == 3:
        assert writers["member3"] == writers["member1"]
    # ... and process 1 trains silently.
    plan = "process 0: member 1, 3; process 1: member 2" if n_members == 3 else \
        "process 0: member 1; process 1: member 2"
    assert plan in logged
    assert "Ensemble member 1 of" in logged and "Ensemble member 2 of" not in logged


def _impatient_worker(rank, world, store, out_path):
    """A rank whose default group gives up on a collective after 1 s; rank 1
    comes to the gather 3 s late (a member that trains long)."""
    import time
    torch.set_num_threads(1)
    distributed.COLLECTIVE_TIMEOUT_S = 1
    distributed.join_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        with distributed.patient_group() as group:
            if rank == 1:
                time.sleep(3)
            gathered = distributed.gather_dealt({rank: f"rank {rank}"}, group)
        if rank == 0:
            torch.save(gathered, out_path)
    finally:
        distributed.leave_group()


def test_ranks_wait_for_each_others_members_past_the_collective_timeout(tmp_path):
    os.environ["OMP_NUM_THREADS"] = "1"
    out_path = str(tmp_path / "rank0.pt")
    mp.spawn(_impatient_worker, args=(2, str(tmp_path / "store"), out_path), nprocs=2)
    assert torch.load(out_path) == {0: "rank 0", 1: "rank 1"}


def _embed_table(chunk):
    from q2_aam.core.transfer import embed_all_asvs
    data, _ = tiny_data()
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**TINY))
    embedded = []
    encode = model.encode_asvs

    def counting(tokens):
        embedded.append(len(tokens))
        return encode(tokens)
    model.encode_asvs = counting
    return embed_all_asvs(model, data, CPU, chunk=chunk), sum(embedded)


def test_the_asv_embedding_pass_is_shared_by_the_ranks(tmp_path):
    single, n_asvs = _embed_table(4)
    parallel, rank0_embedded = run_ranks(tmp_path, 2, _embed_table, 4)
    assert n_asvs == 20 and rank0_embedded == 12        # chunks of 4: 3 on rank 0, 2 on rank 1
    assert torch.equal(parallel, single)                # every chunk computed as in one process
    torch.testing.assert_close(parallel, _embed_table(512)[0], rtol=RTOL, atol=ATOL)


def _accumulated_training(accumulation_steps):
    """Parameters after one epoch of 16 samples in batches of 4, and how often
    the ranks all-reduced gradients."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from q2_aam.core.train import train
    data, _ = tiny_data(24)
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**TINY, faith_pd=True))
    syncs, wrap = [], distributed.wrap

    def counting_wrap(module, device):
        wrapped = wrap(module, device)

        def hook(state, bucket):
            syncs.append(bucket.index() == 0)
            return allreduce_hook(None, bucket)
        if distributed.active():
            wrapped.register_comm_hook(None, hook)
        return wrapped
    distributed.wrap = counting_wrap
    try:
        cfg = short_config(epochs=1, batch_size=4, optimizer="sgd", learning_rate=0.05,
                           scheduler="constant", warmup=0.0,
                           gradient_accumulation_steps=accumulation_steps)
        train(model, data, np.arange(16), np.arange(16, 24), LossFunction("encoder"), cfg,
              log=quiet)
    finally:
        distributed.wrap = wrap
    return {name: p.detach().clone() for name, p in model.named_parameters()}, sum(syncs)


def test_accumulated_gradients_are_all_reduced_once_per_optimizer_step(tmp_path):
    single, _ = _accumulated_training(2)
    parallel, syncs = run_ranks(tmp_path, 2, _accumulated_training, 2)
    assert syncs == 2                       # 4 batches, 2 optimizer steps
    for name, value in single.items():
        torch.testing.assert_close(parallel[name], value, rtol=RTOL, atol=ATOL, msg=name)
