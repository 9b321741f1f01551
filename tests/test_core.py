"""Tests of the torch core (q2_aam.core): no QIIME 2 is imported here."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from q2_aam.core import losses
from q2_aam.core.bundle import ModelBundle
from q2_aam.core.config import ModelConfig, TrainConfig
from q2_aam.core.data import Batch, SampleSet, batch_indices, mask_nucleotides
from q2_aam.core.losses import LossFunction, nuc_loss, unifrac_loss
from q2_aam.core.model import AAMModel, AttentionPool, KmerBag, predicted_distance
from q2_aam.core.pretrain import pretrain
from q2_aam.core.tokenizer import (A, AMBIGUOUS, C, G, MASK, NUCLEOTIDES, PAD, START, T,
                                   tokenize)
from q2_aam.core.optim import warmup_cosine
from q2_aam.core.train import (NonFiniteLossError, deterministic_kernels, predict_outputs,
                                train)

CPU = torch.device("cpu")
TINY = dict(embedding_dim=16, attention_heads=2, attention_layers=1)


def quiet(message):
    pass


def make_sample_set(sim, sequences=None, max_bp=150, asv_limit=1024):
    sequences = sim.sequences.to_dict() if sequences is None else sequences
    data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sequences, max_bp, asv_limit)
    data.distances = sim.unifrac.to_numpy().astype(np.float32)
    return data


def make_model(seed=0, std=None):
    """A tiny model in eval mode. `std` re-draws every weight with a larger spread,
    so outputs depend strongly on the inputs (the default init is close to 0)."""
    torch.manual_seed(seed)
    model = AAMModel(ModelConfig(**TINY))
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="module")
def data(sim):
    return make_sample_set(sim)


@pytest.fixture(scope="module")
def varied_data(sim):
    """Sequences of different lengths (60-100 nt), so batches carry real padding."""
    rng = np.random.default_rng(7)
    seqs = {k: v[:rng.integers(60, 101)] for k, v in sim.sequences.items()}
    return make_sample_set(sim, seqs)


def tiny_train_config(**kw):
    base = dict(epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.25,
                device="cpu", random_seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def bundle(sim):
    return pretrain(make_sample_set(sim), ModelConfig(**TINY), tiny_train_config(), log=quiet)


# --- tokenizer -------------------------------------------------------------------


def test_tokenizer_bases_ambiguity_and_case():
    tokens, n_truncated = tokenize(["ACGTN", "acgtr", "AY"], max_bp=10)
    assert tokens.dtype == np.uint8
    assert tokens.shape == (3, 6)
    np.testing.assert_array_equal(tokens[0], [START, A, C, G, T, AMBIGUOUS])
    np.testing.assert_array_equal(tokens[1], [START, A, C, G, T, AMBIGUOUS])
    np.testing.assert_array_equal(tokens[2], [START, A, AMBIGUOUS, PAD, PAD, PAD])
    assert n_truncated == 0
    # Every IUPAC ambiguity code maps to the ambiguity token, never to padding.
    amb, _ = tokenize(["RYSWKMBDHVN", "rysWkmbdhvn"], max_bp=20)
    assert (amb[:, 1:] == AMBIGUOUS).all()


def test_tokenizer_truncates_and_counts():
    tokens, n_truncated = tokenize(["A" * 10, "C" * 5, "G" * 7, "T" * 6], max_bp=6)
    assert n_truncated == 2          # the 10- and 7-base sequences
    assert tokens.shape == (4, 7)    # start token + max_bp
    assert (tokens[:, 0] == START).all()
    assert (tokens[0, 1:] == A).all()
    np.testing.assert_array_equal(tokens[1], [START] + [C] * 5 + [PAD])
    # Padding only to the longest kept sequence.
    short, n = tokenize(["ACG", "AC"], max_bp=100)
    assert short.shape == (2, 4) and n == 0


@pytest.mark.parametrize("sequence, bad", [("ACG-T", "-"), ("ACG.T", "."), ("ACXGT", "X"),
                                           ("AC GT", " "), ("ACGTé", "é")])
def test_tokenizer_rejects_gaps_and_non_iupac(sequence, bad):
    with pytest.raises(ValueError, match="not IUPAC") as err:
        tokenize(["ACGT", sequence], max_bp=50)
    assert repr(bad) in str(err.value)
    assert "Sequence 1" in str(err.value)


def test_tokenizer_rejects_empty():
    with pytest.raises(ValueError, match="Empty sequence"):
        tokenize(["ACGT", ""], max_bp=10)
    with pytest.raises(ValueError, match="No sequences"):
        tokenize([], max_bp=10)


# --- padding safety, permutation invariance, dedup ---------------------------------


def test_attention_pool_all_false_mask_is_finite():
    torch.manual_seed(0)
    pool = AttentionPool(16)
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[False] * 5, [True, True, False, False, False], [True] * 5])
    out = pool(x, mask)
    assert out.shape == (3, 16)
    assert torch.isfinite(out).all()
    # Masked positions do not influence a row that has real positions.
    x2 = x.clone()
    x2[1, 2:] = 1e3
    out2 = pool(x2, mask)
    torch.testing.assert_close(out2[1], out[1])
    x3 = x.clone()
    x3[1, 1] += 1.0                       # a real position does matter
    assert not torch.allclose(pool(x3, mask)[1], out[1])


def test_all_padding_sample_and_asv_are_finite(data):
    model = make_model(std=0.3)
    batch = data.collate(np.arange(4))
    with torch.no_grad():
        reference = model(batch)["sample_embeddings"]
    batch.asv_mask[1] = False          # sample 1 now has no valid ASV at all
    with torch.no_grad():
        out = model(batch)
    for name, value in out.items():
        assert torch.isfinite(value).all(), name
    # The other samples are untouched by the empty one.
    keep = [0, 2, 3]
    torch.testing.assert_close(out["sample_embeddings"][keep], reference[keep],
                               atol=1e-5, rtol=1e-5)
    # An ASV row of pure padding (never produced by the tokenizer) stays finite too.
    tokens = batch.tokens.clone()
    tokens[0] = PAD
    with torch.no_grad():
        emb, states = model.encode_asvs(tokens)
    assert torch.isfinite(emb).all() and torch.isfinite(states).all()


def test_sample_embedding_is_invariant_to_asv_order(varied_data):
    model = make_model(std=0.3)
    idx = np.arange(6)
    batch = varied_data.collate(idx)
    n_slots = batch.asv_index.shape[1]
    assert n_slots >= 4 and not batch.asv_mask.all()   # padding present too
    with torch.no_grad():
        reference = model(batch)["sample_embeddings"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        # A different slot order for every sample.
        perm = torch.stack([torch.randperm(n_slots, generator=gen) for _ in idx])
        permuted = Batch(sample_index=batch.sample_index,
                         asv_index=torch.gather(batch.asv_index, 1, perm),
                         asv_mask=torch.gather(batch.asv_mask, 1, perm),
                         log_abundance=torch.gather(batch.log_abundance, 1, perm),
                         tokens=batch.tokens)
        with torch.no_grad():
            out = model(permuted)["sample_embeddings"]
        assert not torch.equal(permuted.asv_index, batch.asv_index)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    # Not vacuous: the embedding does depend on which ASV has which abundance.
    swapped = Batch(sample_index=batch.sample_index, asv_index=batch.asv_index,
                    asv_mask=batch.asv_mask, log_abundance=batch.log_abundance.flip(1),
                    tokens=batch.tokens)
    with torch.no_grad():
        changed = model(swapped)["sample_embeddings"]
    assert (changed - reference).abs().max() > 1e-3


def test_dedup_forward_equals_naive_forward(varied_data):
    model = make_model(std=0.3)
    idx = np.array([5, 0, 9, 3, 12, 7, 20, 1])
    batch = varied_data.collate(idx)
    occurrences = varied_data.occurrences(idx)
    assert batch.tokens.shape[0] < occurrences     # some ASVs really are shared
    # Naive: every occurrence of an ASV encoded separately, with extra padding.
    ids = [varied_data.asv_ids[i] for i in idx]
    n_slots = max(len(x) for x in ids)
    flat = np.concatenate(ids)
    tokens = torch.from_numpy(varied_data.tokens[flat].astype(np.int64))
    tokens = torch.cat([tokens, torch.full((len(flat), 13), PAD)], dim=1)
    asv_index = torch.zeros(len(idx), n_slots, dtype=torch.long)
    mask = torch.zeros(len(idx), n_slots, dtype=torch.bool)
    log_abundance = torch.zeros(len(idx), n_slots)
    offset = 0
    for row, x in enumerate(ids):
        asv_index[row, :len(x)] = torch.arange(offset, offset + len(x))
        mask[row, :len(x)] = True
        log_abundance[row, :len(x)] = torch.from_numpy(varied_data.log_abundance[idx[row]])
        offset += len(x)
    naive = Batch(sample_index=torch.from_numpy(idx), asv_index=asv_index, asv_mask=mask,
                  log_abundance=log_abundance, tokens=tokens)
    with torch.no_grad():
        deduped = model(batch)
        expected = model(naive)
    assert expected["sample_embeddings"].shape == (len(idx), 16)
    torch.testing.assert_close(deduped["sample_embeddings"], expected["sample_embeddings"],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(deduped["distance_embeddings"], expected["distance_embeddings"],
                               atol=1e-5, rtol=1e-5)
    # Not vacuous: a naive batch pointing at the wrong occurrences differs.
    wrong = Batch(sample_index=naive.sample_index, asv_index=asv_index.roll(1, dims=0),
                  asv_mask=mask.roll(1, dims=0), log_abundance=log_abundance,
                  tokens=tokens)
    with torch.no_grad():
        other = model(wrong)["sample_embeddings"]
    assert (other - expected["sample_embeddings"]).abs().max() > 1e-3


# --- losses ----------------------------------------------------------------------


def _symmetric(rng, n, zeros=()):
    m = rng.uniform(0.05, 1.0, size=(n, n))
    m = np.triu(m, 1)
    for i, j in zeros:
        m[min(i, j), max(i, j)] = 0.0
    return torch.tensor(m + m.T, dtype=torch.float32)


def test_unifrac_loss_uses_strict_upper_triangle(monkeypatch):
    rng = np.random.default_rng(0)
    n = 6
    pred = torch.tensor(rng.uniform(0, 1, size=(n, n)), dtype=torch.float32)
    true = _symmetric(rng, n)
    holder = {"pred": pred}
    monkeypatch.setattr(losses, "predicted_distance", lambda emb: holder["pred"])
    emb = torch.zeros(n, 4)
    rows, cols = np.triu_indices(n, k=1)
    expected = float(((pred.numpy() - true.numpy())[rows, cols] ** 2).mean())
    base = float(unifrac_loss(emb, true))
    assert base == pytest.approx(expected, rel=1e-6)

    lower = np.tril_indices(n, k=-1)
    diag = np.diag_indices(n)
    for index in (diag, lower):
        p2 = pred.clone()
        p2[index] = torch.rand(len(index[0])) + 5.0
        holder["pred"] = p2
        assert float(unifrac_loss(emb, true)) == pytest.approx(base, rel=1e-6)
        holder["pred"] = pred
        t2 = true.clone()
        t2[index] = 0.37
        assert float(unifrac_loss(emb, t2)) == pytest.approx(base, rel=1e-6)
    # ...while an upper-triangle change does change it.
    p3 = pred.clone()
    p3[0, 1] += 0.5
    holder["pred"] = p3
    assert float(unifrac_loss(emb, true)) != pytest.approx(base, rel=1e-6)


def test_unifrac_loss_real_predictions_match_hand_computation():
    torch.manual_seed(0)
    emb = torch.randn(5, 8) * 0.3
    true = _symmetric(np.random.default_rng(1), 5)
    diff = emb[:, None, :] - emb[None, :, :]
    pred = 1 - torch.exp(-torch.sqrt((diff ** 2).mean(-1) + 1e-8))
    torch.testing.assert_close(predicted_distance(emb), pred)
    assert (pred >= 0).all() and (pred < 1).all()
    rows, cols = np.triu_indices(5, k=1)
    expected = ((pred - true)[rows, cols] ** 2).mean()
    assert float(unifrac_loss(emb, true)) == pytest.approx(float(expected), rel=1e-5)


def test_zero_distance_weight_zero_ignores_zero_pairs(monkeypatch):
    rng = np.random.default_rng(3)
    n = 5
    zero_pairs = [(0, 1), (2, 4)]
    true = _symmetric(rng, n, zeros=zero_pairs)
    pred = torch.tensor(rng.uniform(0, 1, size=(n, n)), dtype=torch.float32)
    holder = {"pred": pred}
    monkeypatch.setattr(losses, "predicted_distance", lambda emb: holder["pred"])
    emb = torch.zeros(n, 4)
    rows, cols = np.triu_indices(n, k=1)
    keep = [(r, c) not in zero_pairs for r, c in zip(rows, cols)]
    diff = (pred.numpy() - true.numpy())[rows, cols][keep]
    base = float(unifrac_loss(emb, true, zero_distance_weight=0.0))
    assert base == pytest.approx(float((diff ** 2).mean()), rel=1e-6)
    p2 = pred.clone()
    p2[0, 1] = 0.99
    p2[2, 4] = 0.01
    holder["pred"] = p2
    assert float(unifrac_loss(emb, true, zero_distance_weight=0.0)) == pytest.approx(base, rel=1e-6)
    # With the default weight, the zero pairs do count.
    assert float(unifrac_loss(emb, true)) != pytest.approx(
        float(unifrac_loss(emb, true, zero_distance_weight=0.0)), rel=1e-6)


def test_nuc_loss_uses_masked_positions_only(data):
    model = make_model(std=0.3)
    rng = np.random.default_rng(0)
    batch = data.collate(np.arange(6), mask_ratio=0.15, rng=rng)
    positions = batch.nuc_positions
    assert positions.dtype == torch.bool and positions.shape == batch.tokens.shape
    m = int(positions.sum())
    assert m > 0 and batch.nuc_targets.shape == (m,)
    with torch.no_grad():
        out = model(batch)
        _, states = model.encode_asvs(batch.tokens)
        full_logits = model.nuc_head(states)            # [U, T, V]
    assert out["nuc_logits"].shape == (m, full_logits.shape[-1])
    torch.testing.assert_close(out["nuc_logits"], full_logits[positions])

    # The loss term of the training objective is cross-entropy on those alone.
    terms = LossFunction("encoder")(out, batch)
    expected = F.cross_entropy(full_logits[positions], batch.nuc_targets)
    assert float(terms["nuc_loss"]) == pytest.approx(float(expected), rel=1e-6)

    # Changing logits or targets at unmasked positions changes nothing.
    full_targets = torch.randint(0, 8, batch.tokens.shape)
    full_targets[positions] = batch.nuc_targets
    base = float(nuc_loss(full_logits[positions], full_targets[positions]))
    noisy_logits = full_logits.clone()
    noisy_logits[~positions] = torch.randn(int((~positions).sum()), full_logits.shape[-1]) * 10
    noisy_targets = full_targets.clone()
    noisy_targets[~positions] = (noisy_targets[~positions] + 1) % 8
    assert float(nuc_loss(noisy_logits[positions], noisy_targets[positions])) == base
    # A masked position does count.
    u, t = positions.nonzero()[0].tolist()
    noisy_logits[u, t, MASK] += 5.0
    assert float(nuc_loss(noisy_logits[positions], full_targets[positions])) != base
    # No masked position: a zero loss that still backpropagates.
    empty = nuc_loss(torch.zeros(0, 8, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_collate_masking_keeps_targets_start_and_padding(varied_data):
    idx = np.arange(10)
    clean = varied_data.collate(idx)
    masked = varied_data.collate(idx, mask_ratio=0.3, rng=np.random.default_rng(5))
    positions, original = masked.nuc_positions, clean.tokens
    torch.testing.assert_close(masked.nuc_targets, original[positions])
    assert not positions[:, 0].any()                       # start token never masked
    assert not positions[original == PAD].any()            # padding never masked
    assert (original[:, 0] == START).all() and (masked.tokens[:, 0] == START).all()
    assert (original == PAD).any()                         # padding is really present
    torch.testing.assert_close(masked.tokens[~positions], original[~positions])
    eligible = original >= NUCLEOTIDES[0]
    fraction = float(positions.sum()) / float(eligible.sum())
    assert abs(fraction - 0.3) < 0.05
    # Without a mask ratio nothing is masked.
    assert clean.nuc_positions is None and clean.nuc_targets is None


def test_collate_asv_dropout(varied_data):
    idx = np.arange(10)
    clean = varied_data.collate(idx)
    dropped = varied_data.collate(idx, rng=np.random.default_rng(3), asv_dropout=0.3)
    again = varied_data.collate(idx, rng=np.random.default_rng(3), asv_dropout=0.3)
    torch.testing.assert_close(dropped.asv_index, again.asv_index)      # seeded
    kept, total = dropped.asv_mask.sum(1), clean.asv_mask.sum(1)
    assert (kept >= 1).all() and (kept <= total).all() and (kept < total).any()
    assert abs(float(kept.sum()) / float(total.sum()) - 0.7) < 0.05
    # Each row keeps a subset of its own ASVs with their own abundances, in order.
    for row, i in enumerate(idx):
        own = iter(varied_data.log_abundance[i].tolist())
        assert all(value in own for value in dropped.log_abundance[row, :int(kept[row])].tolist())
    # A sample never loses every ASV, even at a rate close to 1.
    assert (varied_data.collate(idx, rng=np.random.default_rng(0),
                                asv_dropout=0.99).asv_mask.sum(1) >= 1).all()
    with pytest.raises(ValueError, match="asv_dropout must be in"):
        TrainConfig(asv_dropout=1.0)


def test_training_batches_alone_drop_asvs(data, monkeypatch):
    seen = []
    real_collate = SampleSet.collate

    def spy(self, indices, mask_ratio=0.0, rng=None, asv_dropout=0.0, unknown_rate=0.0):
        seen.append((bool(np.all(np.asarray(indices) < 24)), asv_dropout))
        return real_collate(self, indices, mask_ratio, rng, asv_dropout, unknown_rate)

    monkeypatch.setattr(SampleSet, "collate", spy)
    torch.manual_seed(0)
    train(AAMModel(ModelConfig(**TINY)), data, np.arange(24), np.arange(24, 32),
          LossFunction("encoder"), tiny_train_config(epochs=1, asv_dropout=0.4), log=quiet)
    assert {rate for training, rate in seen if training} == {0.4}
    assert {rate for training, rate in seen if not training} == {0.0}


def test_mask_nucleotides_statistics():
    rng = np.random.default_rng(0)
    tokens, _ = tokenize(["".join(rng.choice(list("ACGTN"), size=rng.integers(50, 120)))
                          for _ in range(400)], max_bp=150)
    masked, positions, targets = mask_nucleotides(tokens, 0.15, np.random.default_rng(1))
    eligible = tokens >= NUCLEOTIDES[0]
    assert not positions[~eligible].any()
    assert abs(positions.sum() / eligible.sum() - 0.15) < 0.01
    np.testing.assert_array_equal(targets, tokens[positions])
    replaced = masked[positions]
    assert abs((replaced == MASK).mean() - 0.8) < 0.03
    assert set(np.unique(replaced)) <= {MASK, *NUCLEOTIDES, AMBIGUOUS}
    np.testing.assert_array_equal(masked[~positions], tokens[~positions])


# --- batching --------------------------------------------------------------------


def test_batch_indices_sizes_and_coverage():
    for n in range(2, 41):
        for batch_size in range(2, 10):
            for rng in (None, np.random.default_rng(n * 100 + batch_size)):
                chunks = batch_indices(np.arange(n) + 100, batch_size, rng)
                sizes = [len(c) for c in chunks]
                assert min(sizes) >= 2, (n, batch_size, sizes)
                assert max(sizes) <= batch_size + 1, (n, batch_size, sizes)
                np.testing.assert_array_equal(np.sort(np.concatenate(chunks)),
                                              np.arange(n) + 100)
    # Seeded shuffling: the same seed gives the same order, and it is shuffled.
    a = np.concatenate(batch_indices(np.arange(50), 8, np.random.default_rng(1)))
    b = np.concatenate(batch_indices(np.arange(50), 8, np.random.default_rng(1)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.arange(50))


def test_collated_distances_follow_batch_order(data):
    rng = np.random.default_rng(2)
    idx = rng.permutation(len(data))[:9]
    batch = data.collate(idx)
    np.testing.assert_array_equal(batch.sample_index.numpy(), idx)
    np.testing.assert_array_equal(batch.distances.numpy(), data.distances[np.ix_(idx, idx)])
    for row, i in enumerate(idx):
        n = len(data.asv_ids[i])
        np.testing.assert_array_equal(batch.log_abundance[row, :n].numpy(),
                                      data.log_abundance[i])
        assert int(batch.asv_mask[row].sum()) == n
    # Padded to the largest sample of the batch, not to asv_limit.
    assert batch.asv_index.shape[1] == max(len(data.asv_ids[i]) for i in idx)


def test_sample_set_keeps_most_abundant_up_to_asv_limit(sim):
    limited = make_sample_set(sim, asv_limit=3)
    counts = sim.counts.to_numpy()
    assert limited.n_capped == int(((counts > 0).sum(1) > 3).sum())
    for row in range(len(limited)):
        kept = limited.asv_ids[row]
        assert len(kept) == min(3, int((counts[row] > 0).sum()))
        threshold = np.sort(counts[row])[::-1][len(kept) - 1]
        assert (counts[row, kept] >= threshold).all()


# --- schedule, errors, determinism, early stopping ---------------------------------


def test_warmup_cosine_shape():
    f = warmup_cosine(100, 0.1)
    values = np.array([f(s) for s in range(100)])
    np.testing.assert_allclose(values[:10], np.arange(1, 11) / 10)      # linear rise
    assert values[9] == pytest.approx(1.0)
    assert (np.diff(values[10:]) <= 1e-12).all()                      # then decays
    assert values[55] == pytest.approx(0.5, abs=0.02)                  # cosine midpoint
    assert values[-1] < 0.01
    g = warmup_cosine(10, 0.0)
    assert g(0) == pytest.approx(1.0)
    assert g(10) == pytest.approx(0.0, abs=1e-12)


def test_non_finite_loss_names_epoch_and_step(data):
    real = LossFunction("encoder")
    calls = {"n": 0}

    def loss_fn(out, batch):
        terms = real(out, batch)
        calls["n"] += 1
        if calls["n"] == 6:              # 4 steps per epoch: epoch 2, step 2
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**TINY))
    cfg = tiny_train_config(epochs=3, batch_size=4, validation_fraction=0.0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2") as err:
        train(model, data, np.arange(16), np.arange(0), loss_fn, cfg, log=quiet)
    assert "learning_rate" in str(err.value)       # it suggests a remedy


def test_same_seed_same_weights_different_seed_differs(sim, bundle):
    again = pretrain(make_sample_set(sim), ModelConfig(**TINY), tiny_train_config(), log=quiet)
    other = pretrain(make_sample_set(sim), ModelConfig(**TINY),
                     tiny_train_config(random_seed=1), log=quiet)
    assert set(bundle.state_dict) == set(again.state_dict) == set(other.state_dict)
    for name, tensor in bundle.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    assert any(not torch.equal(t, other.state_dict[k]) for k, t in bundle.state_dict.items())
    cols = [c for c in bundle.history.columns if c != "seconds"]
    assert bundle.history[cols].equals(again.history[cols])


def test_deterministic_kernels_on_cuda_only_and_restored():
    # Found on an H100: the same seed gave predictions up to 3.5 years apart
    # between two runs until training used deterministic kernels.
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(CPU):
        assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(torch.device("cuda")):     # only switches a flag: no GPU needed
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


def test_heads_run_in_float32_under_bf16_autocast(data):
    # Under bf16 the distance embeddings kept ~3 significant digits: too few for
    # UniFrac differences between samples.
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**TINY, task="regressor", n_outputs=1)).eval()
    batch = data.collate(np.arange(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    for name in ("sample_embeddings", "distance_embeddings", "target"):
        assert out[name].dtype == torch.float32, name
    with torch.no_grad():
        exact = model(batch)
    assert torch.allclose(out["target"], exact["target"], atol=0.05)


def test_early_stopping_restores_best_epoch(data):
    scripted = [5.0, 3.0, 1.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    snapshots = []
    real = LossFunction("encoder")

    def loss_fn(out, batch):
        if torch.is_grad_enabled():       # training: the real objective
            return real(out, batch)
        epoch = len(snapshots)            # validation of epoch len(snapshots) + 1
        return {"loss": torch.tensor(scripted[epoch])}

    def evaluate(model, data_, val_idx, device):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"marker": float(len(snapshots))}, f"detail {len(snapshots)}"

    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**TINY))
    cfg = tiny_train_config(epochs=10, patience=3, learning_rate=3e-3)
    result = train(model, data, np.arange(24), np.arange(24, 32), loss_fn, cfg,
                   evaluate=evaluate, log=quiet)
    assert result.best_epoch == 3
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]    # stopped after 3 stale
    np.testing.assert_allclose(result.history["val/loss"], scripted[:6])
    assert result.best_validation == "detail 3"
    state = model.state_dict()
    for name, tensor in snapshots[2].items():
        assert torch.equal(state[name], tensor), name
    assert any(not torch.equal(state[k], v) for k, v in snapshots[5].items())


def test_pretrain_info_best_epoch_matches_history(bundle):
    history = bundle.history
    best = int(history.loc[history["val/loss"].idxmin(), "epoch"])
    assert bundle.info["best_epoch"] == best
    assert bundle.info["n_samples"] == 32
    assert len(bundle.info["train_samples"]) == 24


# --- bundle ----------------------------------------------------------------------


def test_bundle_round_trip_and_history(tmp_path, data, bundle):
    expected_columns = {"epoch", "train/loss", "val/loss", "train/unifrac_loss",
                        "train/nuc_loss", "val/unifrac_loss", "val/nuc_loss",
                        "val/unifrac_r2", "learning_rate"}
    assert expected_columns <= set(bundle.history.columns)
    assert len(bundle.history) == 2
    assert np.isfinite(bundle.history[sorted(expected_columns)].to_numpy()).all()

    bundle.save(tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {
        "config.json", "model.safetensors", "history.tsv", "validation.tsv", "tensorboard"}
    loaded = ModelBundle.load(tmp_path / "model")
    assert loaded.model_config == bundle.model_config
    assert loaded.info == bundle.info
    assert set(loaded.state_dict) == set(bundle.state_dict)
    for name, tensor in bundle.state_dict.items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    np.testing.assert_allclose(loaded.history.to_numpy(dtype=float),
                               bundle.history.to_numpy(dtype=float), rtol=1e-12)
    assert list(loaded.history.columns) == list(bundle.history.columns)
    assert loaded.event_files.keys() == bundle.event_files.keys() and loaded.event_files

    idx = np.arange(len(data))
    before = predict_outputs(bundle.build_model(), data, idx, 8, CPU)
    after = predict_outputs(loaded.build_model(), data, idx, 8, CPU)
    assert before["sample_embeddings"].shape == (len(data), 16)
    np.testing.assert_array_equal(after["sample_embeddings"], before["sample_embeddings"])
    np.testing.assert_array_equal(after["distance_embeddings"], before["distance_embeddings"])
    # The untrained model gives other embeddings: the weights really were loaded.
    fresh = predict_outputs(make_model(seed=123), data, idx, 8, CPU)
    assert not np.allclose(fresh["sample_embeddings"], before["sample_embeddings"])


def test_build_model_accepts_weights_saved_before_whitening_and_refuses_others(bundle):
    old = {k: v for k, v in bundle.state_dict.items()
           if k not in ("asv_center", "asv_whitening")}
    model = ModelBundle(bundle.model_config, old, bundle.history).build_model()
    assert torch.equal(model.asv_whitening, torch.eye(bundle.model_config.embedding_dim))
    broken = {k: v for k, v in old.items() if k != "nuc_head.weight"}
    with pytest.raises(ValueError, match="do not match.*'nuc_head.weight'"):
        ModelBundle(bundle.model_config, broken, bundle.history).build_model()


def test_kmer_bag_by_hand():
    bag = KmerBag(2, 3)
    assert not bag.table.weight.any()              # zero: changes nothing at first
    with torch.no_grad():
        bag.table.weight.copy_(torch.arange(17 * 3, dtype=torch.float32).view(17, 3))
    row = lambda index: bag.table.weight[index]    # 2-mer index: 4 * first + second (A=0..T=3)
    tokens = torch.tensor([
        [START, A, C, G, T, MASK, A, C, PAD],      # AC CG GT, then AC; nothing across MASK
        [START, A, AMBIGUOUS, C, C, PAD, PAD, PAD, PAD],     # CC only
        [START, T, PAD, PAD, PAD, PAD, PAD, PAD, PAD]])      # shorter than k: nothing
    out = bag(tokens).detach()
    torch.testing.assert_close(out[0], 2 * row(1) + row(6) + row(11))
    torch.testing.assert_close(out[1], row(5))
    assert not out[2].any()
    assert bag(torch.tensor([[START]])).shape == (1, 3)   # fewer tokens than k


def test_zero_kmer_bag_leaves_a_model_unchanged_then_tells_asvs_apart(varied_data):
    idx = np.arange(8)
    torch.manual_seed(0)
    plain = AAMModel(ModelConfig(**TINY)).eval()
    with_kmers = AAMModel(ModelConfig(**TINY, kmer_size=4)).eval()
    missing, unexpected = with_kmers.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["kmer_bag.table.weight"] and not unexpected
    before = predict_outputs(plain, varied_data, idx, 8, CPU)["sample_embeddings"]
    after = predict_outputs(with_kmers, varied_data, idx, 8, CPU)["sample_embeddings"]
    np.testing.assert_allclose(after, before, atol=1e-6)
    # A frozen batch carries tokens too: the k-mer bag reads them.
    batch = varied_data.collate(idx)
    tokens = torch.from_numpy(varied_data.tokens.astype(np.int64))
    varied_data.asv_embedding_table = torch.zeros(len(tokens), TINY["embedding_dim"])
    try:
        frozen = varied_data.collate(idx)
    finally:
        varied_data.asv_embedding_table = None
    torch.testing.assert_close(frozen.tokens, batch.tokens)
    # Random k-mer embeddings give (nearly) every ASV sequence its own vector.
    torch.nn.init.normal_(with_kmers.kmer_bag.table.weight)
    vectors = with_kmers.kmer_bag(tokens).detach().numpy()
    distinct_sequences = len(np.unique(varied_data.tokens, axis=0))
    assert len(np.unique(vectors.round(4), axis=0)) == distinct_sequences


def test_regression_losses_by_hand():
    pred, target = torch.tensor([[0.0], [2.0], [-3.0]]), torch.tensor([1.0, 2.0, 0.0])
    assert float(losses.regression_loss(pred, target, "mse")) == pytest.approx(10 / 3)
    assert float(losses.regression_loss(pred, target, "l1")) == pytest.approx(4 / 3)
    # Huber (delta 1): 0.5 e^2 within one unit, |e| - 0.5 beyond.
    assert float(losses.regression_loss(pred, target, "huber")) == pytest.approx(3 / 3)
    with pytest.raises(ValueError, match="regression_loss must be one of 'auto', 'mse', 'huber', 'l1', 'binned'"):
        TrainConfig(regression_loss="mae")


def test_binned_regression_loss_by_hand():
    centers = torch.tensor([0.0, 1.0, 3.0])
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    # 0.25 splits 0.75 / 0.25 between 0 and 1; 2.0 is halfway from 1 to 3;
    # -4 lies beyond the first center and goes to it whole.
    targets = torch.tensor([0.25, 2.0, -4.0])
    labels = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    expected = -(labels * torch.log_softmax(logits, -1)).sum(1).mean()
    assert float(losses.binned_regression_loss(logits, targets, centers)) == pytest.approx(
        float(expected))
    assert (labels @ centers)[:2].tolist() == targets[:2].tolist()   # two-hot keeps the mean
    with pytest.raises(ValueError, match="needs bin_centers"):
        LossFunction("regressor", regression_loss="binned")


def test_binned_median_by_hand():
    from q2_aam.core.supervised import binned_median
    centers = np.array([10.0, 20.0, 40.0])
    log = np.log
    rows = np.array([[log(1e-12), 0.0, log(1e-12)],      # all on 20: exactly 20
                     [log(0.5), log(0.5), log(1e-12)],   # CDF at 10: 0.25, at 20: 0.75
                     [log(0.7), log(0.3), log(1e-12)],   # CDF 0.35 at 10, 0.85 at 20
                     [log(0.1), log(0.1), log(0.8)]])    # the heavy last center
    np.testing.assert_allclose(binned_median(rows, centers), [20.0, 15.0, 13.0, 40.0 - 20.0 * (
        (0.6 - 0.5) / (0.6 - 0.15))], rtol=1e-6)


def test_target_bins_are_unique_quantiles_with_shared_values_on_a_center():
    from q2_aam.core.supervised import MAX_BINS, MIN_BINS, target_bins
    values = np.concatenate([np.full(300, 26.0), np.linspace(18, 80, 700)])
    centers = target_bins(values)
    # 1000 samples: 50 quantiles, of which those inside the 300 equal values merge.
    assert np.all(np.diff(centers) > 0) and len(centers) < 50
    assert centers[0] == 18 and centers[-1] == 80 and 26.0 in centers
    assert len(target_bins(np.arange(10.0))) == MIN_BINS
    assert len(target_bins(np.arange(10000.0))) == MAX_BINS
    with pytest.raises(ValueError, match="at least two distinct target values"):
        target_bins(np.full(10, 3.0))


def test_member_seeds_keep_the_first_and_share_none_across_seeds():
    from q2_aam.core.supervised import member_seeds
    assert member_seeds(7, 1) == [7]
    first, second = member_seeds(0, 4), member_seeds(1, 4)
    assert first[0] == 0 and second[0] == 1 and len(set(first)) == 4
    assert not set(first) & set(second)
    assert member_seeds(0, 4) == first


def test_ensemble_pools_members(data):
    from q2_aam.core.model import Ensemble, build_model
    batch = data.collate(np.arange(4))
    torch.manual_seed(0)
    for task, n_outputs in (("classifier", 3), ("regressor", 5), ("regressor", 1)):
        cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1, task=task,
                          n_outputs=n_outputs, ensemble_size=3)
        ensemble = build_model(cfg).eval()
        assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
        assert isinstance(build_model(ModelConfig(**{**cfg.to_dict(), "ensemble_size": 1})),
                          AAMModel)
        with torch.no_grad():
            for member in ensemble.members:      # members that answer differently
                member.target_head[1].weight.normal_()
            outs = [member(batch) for member in ensemble.members]
            pooled = ensemble(batch)
        targets = torch.stack([o["target"] for o in outs])
        if n_outputs > 1:    # classes or target bins: the mean of the probabilities
            expected = torch.softmax(targets, -1).mean(0)
            torch.testing.assert_close(torch.softmax(pooled["target"], -1), expected)
        else:
            torch.testing.assert_close(pooled["target"], targets.mean(0))
        torch.testing.assert_close(pooled["sample_embeddings"],
                                   torch.cat([o["sample_embeddings"] for o in outs], -1))


def test_ensemble_encodes_shared_asvs_once_with_the_same_outputs(data, monkeypatch):
    """Members fitted on one frozen encoder: the ensemble embeds each batch's
    ASVs once, not once per member, and answers exactly as before."""
    from q2_aam.core.model import build_model
    cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1,
                      task="regressor", n_outputs=1, ensemble_size=3, kmer_size=3)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    for k in (1, 2):      # every member gets the first member's ASV encoder and whitening
        for name in [n for n in state if n.startswith("members.0.asv_")]:
            state[name.replace("members.0.", f"members.{k}.")] = state[name].clone()
    shared = build_model(cfg)
    shared.load_state_dict(state)
    separate = build_model(cfg)
    separate.load_state_dict(state)
    separate.shared_asv_encoder = False
    assert shared.shared_asv_encoder
    calls = []
    original = AAMModel.encode_asvs
    monkeypatch.setattr(AAMModel, "encode_asvs",
                        lambda self, tokens: calls.append(1) or original(self, tokens))
    batch = data.collate(np.arange(6))
    with torch.no_grad():
        out_shared = shared.eval()(batch)
        assert len(calls) == 1
        out_separate = separate.eval()(batch)
        assert len(calls) == 1 + 3
    for key in ("target", "sample_embeddings"):
        torch.testing.assert_close(out_shared[key], out_separate[key], rtol=0, atol=0)
    state["members.2.asv_encoder.ln.weight"] += 0.1     # one member's encoder differs
    differing = build_model(cfg)
    differing.load_state_dict(state)
    assert not differing.shared_asv_encoder


def test_asv_whitening_by_hand(bundle, data):
    from q2_aam.core.supervised import embed_all_asvs, whiten_asv_embeddings
    model = bundle.build_model()
    d = model.cfg.embedding_dim
    raw = embed_all_asvs(model, data, CPU).double().numpy()
    ridge = 1e-3
    returned = whiten_asv_embeddings(model, data, CPU, ridge=ridge)
    white = embed_all_asvs(model, data, CPU).double().numpy()
    # What it returns (a frozen fit's table) is exactly what the model now gives.
    np.testing.assert_array_equal(returned.double().numpy(), white)
    # Centred on the training ASVs, and each principal axis of variance v scaled
    # to variance v / (v + ridge * total).
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-4)
    variance, axes = np.linalg.eigh(np.cov(raw.T, bias=True))
    variance = variance.clip(0)
    expected = axes @ np.diag(variance / (variance + ridge * variance.sum())) @ axes.T
    np.testing.assert_allclose(np.cov(white.T, bias=True), expected, atol=2e-3)
    assert expected.trace() > 0.5 * d            # most axes really reach unit variance
    # Whitening again from a whitened model starts from the raw embeddings.
    whiten_asv_embeddings(model, data, CPU, ridge=ridge)
    np.testing.assert_allclose(embed_all_asvs(model, data, CPU).double().numpy(), white,
                               atol=1e-4)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="divisible by attention_heads"):
        ModelConfig(embedding_dim=10, attention_heads=3)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="warmup must be in"):
        TrainConfig(warmup=1.5)
    with pytest.raises(ValueError, match="kmer_size must be 0 .none. to 8, not 9"):
        ModelConfig(kmer_size=9)
    # Configurations saved before k-mers existed describe models without them.
    assert ModelConfig.from_dict({"embedding_dim": 16, "attention_heads": 2}).kmer_size == 0
    assert math.isclose(TrainConfig().nuc_mask_ratio, 0.15)


def test_core_imports_no_qiime2():
    code = ("import sys, q2_aam.core.pretrain, q2_aam.core.train, q2_aam.core.bundle, "
            "q2_aam.core.simulate; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qiime2', 'q2_types', 'q2cli', 'biom', 'skbio')); assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
