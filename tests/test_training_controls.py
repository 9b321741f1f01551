"""Tests of the training controls: every optimizer and learning-rate schedule trains,
the learning rate follows its schedule (read back from the history), gradient
accumulation steps the schedule once per optimizer step, bad values are refused,
and the learning-rate range test works in the core and as the find-learning-rate
visualizer (its page opened in headless Chromium)."""
import math
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import qiime2
import torch

from q2_aam.core import train as train_module
from q2_aam.core.config import OPTIMIZERS, SCHEDULERS, ModelConfig, TrainConfig
from q2_aam.core.data import SampleSet, batch_indices
from q2_aam.core.losses import LossFunction
from q2_aam.core.lr_finder import lr_range_test, steps_skipped, suggest_learning_rate
from q2_aam.core.model import AAMModel
from q2_aam.core.optim import Lion, make_optimizer, make_scheduler
from q2_aam.core.train import epoch_batches, run_epoch_losses, train


CPU = torch.device("cpu")
TINY = dict(embedding_dim=16, attention_heads=2, attention_layers=1)
# 32 samples in batches of 8: 4 optimizer steps per epoch, 32 in the run.
RUN = dict(epochs=8, batch_size=8, validation_fraction=0.0, nuc_mask_ratio=0.0, warmup=0.25,
           patience=8, device="cpu", random_seed=0)
STEPS_PER_EPOCH, TOTAL_STEPS, WARMUP_STEPS = 4, 32, 8
# A learning rate that trains the tiny model in 32 steps, per optimizer.
LEARNING_RATES = {"adamw": 3e-3, "adam": 3e-3, "sgd": 0.1, "lion": 3e-4}
EVIL_NAME = "<b>age</b> & $x"
TRAINING_ACTIONS = ("pretrain", "fit_regressor", "fit_classifier", "regress_samples",
                    "classify_samples")


def quiet(message):
    pass


@pytest.fixture(scope="module")
def data(sim):
    data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sim.sequences.to_dict(), max_bp=150, asv_limit=1024)
    data.distances = sim.unifrac.to_numpy().astype(np.float32)
    return data


def unifrac_loss_of(model, data, cfg):
    # The UniFrac loss alone, unmasked and in a fixed order: a deterministic measure.
    return run_epoch_losses(model, data, np.arange(len(data)), LossFunction("encoder",
                            nuc_penalty=0.0), cfg, CPU, np.random.default_rng(0))["loss"]


def train_tiny(data, **settings):
    """Train a tiny encoder on the UniFrac loss; returns (history, loss before, loss after)."""
    cfg = TrainConfig(**{**RUN, **settings})
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**TINY))
    before = unifrac_loss_of(model, data, cfg)
    result = train(model, data, np.arange(len(data)), np.arange(0),
                   LossFunction("encoder", nuc_penalty=0.0), cfg, log=quiet)
    return result.history, before, unifrac_loss_of(model, data, cfg)


@pytest.fixture(scope="module")
def runs(data):
    """Each optimizer with the default schedule, and the default optimizer with each
    schedule, trained once for the module."""
    combinations = {(optimizer, "warmup_cosine") for optimizer in OPTIMIZERS}
    combinations |= {("adamw", scheduler) for scheduler in SCHEDULERS}
    return {(optimizer, scheduler): train_tiny(data, optimizer=optimizer, scheduler=scheduler,
                                               learning_rate=LEARNING_RATES[optimizer])
            for optimizer, scheduler in sorted(combinations)}


# --- optimizers -----------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_reduces_the_training_loss(runs, optimizer):
    history, before, after = runs[(optimizer, "warmup_cosine")]
    assert after < 0.5 * before, (before, after)
    assert np.isfinite(history["train/loss"]).all()


def test_optimizers_are_built_as_documented():
    model = AAMModel(ModelConfig(**TINY))
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
                "lion": Lion}
    for name, kind in expected.items():
        optimizer = make_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.05,
                                                      learning_rate=1e-3))
        assert type(optimizer) is kind
        matrices, vectors = optimizer.param_groups
        assert matrices["weight_decay"] == 0.05 and vectors["weight_decay"] == 0.0
        assert all(p.dim() >= 2 for p in matrices["params"])
        assert all(p.dim() < 2 for p in vectors["params"])
        assert matrices["lr"] == 1e-3
    sgd = make_optimizer(model, TrainConfig(optimizer="sgd")).param_groups[0]
    assert sgd["momentum"] == 0.9 and sgd["nesterov"]
    assert make_optimizer(model, TrainConfig(optimizer="lion")).param_groups[0]["betas"] == \
        (0.9, 0.99)


def test_lion_update_by_hand():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    gradient = torch.tensor([0.3, -0.1, 0.0])
    lion = Lion([weight], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    expected = weight.detach().clone()
    for momentum in (torch.zeros(3), 0.01 * gradient):
        weight.grad = gradient.clone()
        lion.step()
        # Decoupled decay, then lr times the sign of beta1 * m + (1 - beta1) * g.
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * torch.sign(0.9 * momentum + 0.1 * gradient)
        torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(lion.state[weight]["momentum"], 0.0199 * gradient)


# --- schedules ------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_each_scheduler_reduces_the_training_loss(runs, scheduler):
    history, before, after = runs[("adamw", scheduler)]
    assert after < 0.5 * before, (before, after)


def epoch_start_rates(multiplier, peak, steps_per_epoch=STEPS_PER_EPOCH, epochs=8):
    return [peak * multiplier(epoch * steps_per_epoch) for epoch in range(epochs)]


def warmup_cosine_by_hand(step, total=TOTAL_STEPS, warmup=WARMUP_STEPS):
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def constant_by_hand(step, warmup=WARMUP_STEPS):
    return (step + 1) / warmup if step < warmup else 1.0


@pytest.mark.parametrize("scheduler, multiplier", [
    ("warmup_cosine", warmup_cosine_by_hand),
    ("cosine", lambda step: warmup_cosine_by_hand(step, warmup=0)),
    ("constant", constant_by_hand),
    ("plateau", constant_by_hand),      # the training loss kept falling: no reduction
])
def test_history_learning_rate_follows_the_schedule(runs, scheduler, multiplier):
    # The history records the rate at the start of each epoch.
    history, _, _ = runs[("adamw", scheduler)]
    np.testing.assert_allclose(history["learning_rate"],
                               epoch_start_rates(multiplier, LEARNING_RATES["adamw"]),
                               rtol=1e-6)


def rates_of(scheduler, total_steps, warmup, peak=1.0):
    """The rate of every optimizer step of a run under `scheduler`."""
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=peak)
    schedule = make_scheduler(optimizer, TrainConfig(scheduler=scheduler, warmup=warmup,
                                                     learning_rate=peak), total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()
    return np.array(rates)


@pytest.mark.parametrize("warmup, peak_step", [(0.25, 10), (0.0, 12)])
def test_onecycle_rises_to_the_learning_rate_then_falls(warmup, peak_step):
    rates = rates_of("onecycle", 40, warmup, peak=0.01)
    assert rates.max() == pytest.approx(0.01)
    assert rates.argmax() == peak_step          # the rise: warmup, or 0.3 without one
    assert rates[0] == pytest.approx(0.01 / 25)
    assert rates[-1] == pytest.approx(0.01 / 25e4)
    assert (np.diff(rates[:peak_step + 1]) > 0).all() and (np.diff(rates[peak_step:]) < 0).all()


def test_onecycle_history_peaks_near_the_learning_rate(runs):
    rates = runs[("adamw", "onecycle")][0]["learning_rate"]
    peak = LEARNING_RATES["adamw"]
    assert rates.max() == pytest.approx(peak, rel=0.05)       # epoch 3 starts at step 8
    assert rates.iloc[0] == pytest.approx(peak / 25)


@pytest.mark.parametrize("total_steps, warmup", [(20, 0.05), (10, 0.1), (2, 0.5), (1, 0.3)])
def test_onecycle_survives_short_runs(total_steps, warmup):
    # torch's OneCycleLR divides by zero when warmup * total_steps is exactly 1.
    rates = rates_of("onecycle", total_steps, warmup)
    assert np.isfinite(rates).all() and (rates > 0).all()


def test_plateau_halves_the_rate_after_the_warmup_when_the_loss_stalls():
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    # patience 3: halve after one epoch without a new best; 2 steps per epoch, 4 of warmup.
    schedule = make_scheduler(optimizer, TrainConfig(scheduler="plateau", warmup=0.2,
                                                     patience=3, learning_rate=1.0), 20)
    rates = []
    for monitored in [9.0, 9.5, 5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 2.0, 2.5]:
        rates.append(optimizer.param_groups[0]["lr"])
        for _ in range(2):
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(monitored)
    # Warmup 0.25, 0.75. Epoch 1 ends inside the warmup and is not judged: had it
    # been, epoch 2's 9.5 would have counted as a stall.
    assert rates == pytest.approx([0.25, 0.75, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.125, 0.125])


# --- gradient accumulation ------------------------------------------------------------


@pytest.fixture
def counted_steps(monkeypatch):
    """Counts of optimizer steps, schedule steps and the run's planned total."""
    counts = {"optimizer": 0, "schedule": 0, "planned": None}

    def counting_optimizer(model, cfg):
        optimizer = make_optimizer(model, cfg)
        def count(*_):
            counts["optimizer"] += 1
        optimizer.register_step_post_hook(count)
        return optimizer

    def counting_scheduler(optimizer, cfg, total_steps):
        schedule = make_scheduler(optimizer, cfg, total_steps)
        step_batch = schedule.step_batch
        counts["planned"] = total_steps

        def counted():
            counts["schedule"] += 1
            step_batch()
        schedule.step_batch = counted
        return schedule

    monkeypatch.setattr(train_module, "make_optimizer", counting_optimizer)
    monkeypatch.setattr(train_module, "make_scheduler", counting_scheduler)
    return counts


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_accumulation_steps_the_schedule_once_per_optimizer_step(data, counted_steps,
                                                                 accumulation):
    # Batches of 6 from 32 samples: 5 full batches and one of 2, so with 4 the last
    # optimizer step of each epoch gathers only 2 batches.
    n_batches = len(batch_indices(np.arange(len(data)), 6))
    assert n_batches == 6
    history, _, _ = train_tiny(data, epochs=3, batch_size=6, scheduler="constant",
                               learning_rate=LEARNING_RATES["adamw"],
                               gradient_accumulation_steps=accumulation)
    steps_per_epoch = math.ceil(n_batches / accumulation)
    assert counted_steps["optimizer"] == counted_steps["schedule"] == 3 * steps_per_epoch
    assert counted_steps["planned"] == 3 * steps_per_epoch
    warmup_steps = round(0.25 * 3 * steps_per_epoch)
    np.testing.assert_allclose(
        history["learning_rate"],
        epoch_start_rates(lambda step: constant_by_hand(step, warmup_steps),
                          LEARNING_RATES["adamw"], steps_per_epoch, epochs=3), rtol=1e-6)


def test_few_samples_make_an_epoch_of_several_shuffled_passes():
    indices = np.arange(10, 55)                     # 45 samples in batches of 32: 2 per pass
    cfg = TrainConfig(batch_size=32, min_epoch_steps=7)
    batches = epoch_batches(indices, cfg, np.random.default_rng(0))
    assert len(batches) == 8                        # 4 passes: the first to reach 7 steps
    passes = [np.concatenate(batches[i:i + 2]) for i in range(0, 8, 2)]
    for done in passes:
        assert sorted(done) == list(indices)        # each pass holds every sample once
    assert len({tuple(done) for done in passes}) == 4    # each shuffled anew
    # counted in optimizer steps: 2 batches per step need 7 x 2 batches
    assert len(epoch_batches(indices, replace(cfg, gradient_accumulation_steps=2))) == 14
    # enough samples (or 0): one pass, as without the setting
    assert len(epoch_batches(indices, replace(cfg, min_epoch_steps=2))) == 2
    assert len(epoch_batches(indices, replace(cfg, min_epoch_steps=0))) == 2


def test_min_epoch_steps_sets_the_optimizer_steps_and_schedule(data, counted_steps):
    # 32 samples in batches of 8: 4 steps a pass; 10 steps an epoch need 3 passes.
    history, _, _ = train_tiny(data, epochs=2, min_epoch_steps=10, scheduler="constant",
                               learning_rate=LEARNING_RATES["adamw"])
    assert counted_steps["optimizer"] == counted_steps["schedule"] == 2 * 12
    assert counted_steps["planned"] == 2 * 12
    assert list(history["epoch"]) == [1, 2]


# --- refused values -------------------------------------------------------------------


@pytest.mark.parametrize("setting, message", [
    (dict(optimizer="bogus"), "optimizer must be one of 'adamw', 'adam', 'sgd', 'lion'"),
    (dict(scheduler="bogus"), "scheduler must be one of 'warmup_cosine', 'cosine', "
                              "'plateau', 'onecycle', 'constant'"),
    (dict(warmup=1.0), r"warmup must be in \[0, 1\)"),
    (dict(warmup=-0.1), r"warmup must be in \[0, 1\)"),
    (dict(learning_rate=0.0), "learning_rate must be positive"),
    (dict(learning_rate=-1e-3), "learning_rate must be positive"),
])
def test_train_config_refuses_bad_values(setting, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**setting)


def test_loss_refuses_a_negative_zero_distance_weight():
    with pytest.raises(ValueError, match="zero_distance_weight must be non-negative"):
        LossFunction("encoder", zero_distance_weight=-0.5)


@pytest.mark.parametrize("action, setting", [
    ("pretrain", dict(optimizer="bogus")),
    ("pretrain", dict(scheduler="bogus")),
    ("pretrain", dict(warmup=1.0)),
    ("pretrain", dict(learning_rate=0.0)),
    ("pretrain", dict(zero_distance_weight=-1.0)),
    ("fit_regressor", dict(optimizer="bogus")),
    ("fit_regressor", dict(zero_distance_weight=-1.0)),
    ("fit_classifier", dict(scheduler="bogus")),
])
def test_artifact_api_refuses_bad_values(aam, artifacts, action, setting):
    table, sequences, distance_matrix, metadata = artifacts
    inputs = dict(table=table, sequences=sequences, distance_matrix=distance_matrix)
    if action != "pretrain":
        column = "age" if action == "fit_regressor" else "site"
        inputs["metadata"] = metadata.get_column(column)
    with pytest.raises((TypeError, ValueError), match=list(setting)[0]):
        getattr(aam.methods, action)(**inputs, **TINY, epochs=1, **setting)


@pytest.mark.parametrize("action", ["pretrain", "fit_regressor"])
def test_plugin_functions_refuse_a_negative_zero_distance_weight(sim, action):
    # Called directly (as Python, without QIIME 2's type checks) the core refuses it.
    from q2_aam import _pretrain, _supervised
    from q2_aam._examples import to_views
    table, sequences, distances, metadata = to_views(sim)
    settings = dict(**TINY, epochs=1, batch_size=8, device="cpu", zero_distance_weight=-1.0)
    with pytest.raises(ValueError, match="zero_distance_weight must be non-negative"):
        if action == "pretrain":
            _pretrain.pretrain(table, sequences, distances, **settings)
        else:
            _supervised.fit_regressor(table, sequences, metadata.get_column("age"),
                                      distance_matrix=distances, **settings)


@pytest.mark.parametrize("action", TRAINING_ACTIONS)
def test_every_training_action_offers_the_choices(aam, action):
    parameters = getattr(aam.actions, action).signature.parameters
    for name, choices in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS)):
        spec = parameters[name]
        assert spec.default == choices[0]
        assert all(f"'{choice}'" in spec.description for choice in choices), name
        assert all(choice in str(spec.qiime_type) for choice in choices)


# --- the range test -------------------------------------------------------------------


def test_suggestion_is_a_tenth_of_the_lowest_loss_rate_after_the_start():
    rates = np.geomspace(1e-6, 1.0, 61)
    losses = (np.log10(rates) + 2) ** 2          # lowest at 1e-2
    losses[0] = -1.0                             # a lucky first batch is not a minimum
    assert suggest_learning_rate(rates, losses, 1e-6, 1.0, skip=10) == \
        pytest.approx((1e-3, 1e-2))
    # Kept inside the sweep's range.
    assert suggest_learning_rate(rates, -rates, 0.5, 1.0, skip=0)[0] == pytest.approx(0.5)


def test_range_test_returns_a_finite_suggestion_inside_the_range(data):
    result = lr_range_test(data, None, "encoder", ModelConfig(**TINY),
                           TrainConfig(batch_size=8, device="cpu"), min_lr=1e-5, max_lr=1.0,
                           steps=40, log=quiet)
    curve = result.curve
    assert 1e-5 <= result.suggested_learning_rate <= 1.0
    assert result.suggested_learning_rate == pytest.approx(
        max(1e-5, result.lowest_loss_learning_rate / 10))
    assert np.isfinite(curve[["learning_rate", "loss", "smoothed_loss"]].to_numpy()).all()
    assert curve["learning_rate"].iloc[0] == pytest.approx(1e-5)
    ratios = curve["learning_rate"].to_numpy()[1:] / curve["learning_rate"].to_numpy()[:-1]
    np.testing.assert_allclose(ratios, (1.0 / 1e-5) ** (1 / 39))    # exponential sweep
    assert result.diverged == (len(curve) < 40)


def test_range_test_stops_when_the_loss_diverges(data):
    result = lr_range_test(data, None, "encoder", ModelConfig(**TINY),
                           TrainConfig(batch_size=8, device="cpu", optimizer="sgd",
                                       max_grad_norm=1e3),
                           min_lr=1e-3, max_lr=1e6, steps=60, log=quiet)
    assert result.diverged and len(result.curve) < 60
    assert 1e-3 <= result.suggested_learning_rate < 1e6


def test_range_test_of_a_classifier_uses_the_target_loss(data, sim):
    result = lr_range_test(data, sim.metadata["site"].to_numpy(), "classifier",
                           ModelConfig(**TINY), TrainConfig(batch_size=8, device="cpu",
                                                            nuc_mask_ratio=0.0),
                           steps=20, log=quiet)
    assert np.isfinite(result.suggested_learning_rate)
    assert data.targets is None      # the class codes went to a copy, not the caller's set


# --- find-learning-rate ---------------------------------------------------------------


@pytest.fixture(scope="module")
def range_test_pages(aam, artifacts, tmp_path_factory):
    table, sequences, distance_matrix, metadata = artifacts
    frame = metadata.to_dataframe()
    evil = qiime2.Metadata(frame.rename(columns={"site": EVIL_NAME}))
    root = tmp_path_factory.mktemp("range-test")
    pages = {}
    for name, inputs in [
            ("pretraining", dict(distance_matrix=distance_matrix)),
            ("classification", dict(distance_matrix=distance_matrix,
                                    metadata=evil.get_column(EVIL_NAME)))]:
        visualization, = aam.visualizers.find_learning_rate(
            table=table, sequences=sequences, **inputs, **TINY, batch_size=8, steps=20,
            device="cpu")
        visualization.export_data(str(root / name))
        pages[name] = root / name
    return pages


def test_range_test_page_states_and_marks_the_suggestion(range_test_pages):
    directory = range_test_pages["pretraining"]
    for name in ("index.html", "range_test.png", "range_test.svg", "range_test.tsv"):
        assert (directory / name).stat().st_size > 0
    curve = pd.read_csv(directory / "range_test.tsv", sep="\t")
    assert list(curve.columns) == ["step", "learning_rate", "loss", "smoothed_loss"]
    lowest = curve.loc[curve["smoothed_loss"].iloc[steps_skipped(20):].idxmin(), "learning_rate"]
    suggested = f"{max(1e-6, lowest / 10):.2g}"
    html = (directory / "index.html").read_text()
    assert f'<strong id="suggested-learning-rate">{suggested}</strong>' in html
    assert f"qiime aam pretrain ... --p-optimizer adamw --p-learning-rate {suggested}" in html
    assert "UniFrac and masked-nucleotide losses" in html


def test_range_test_page_of_a_classifier_escapes_the_column_name(range_test_pages):
    html = (range_test_pages["classification"] / "index.html").read_text()
    assert "qiime aam fit-classifier" in html
    assert "classification loss of &#39;&lt;b&gt;age&lt;/b&gt; &amp; $x&#39;, with the UniFrac " \
           "loss" in html
    assert EVIL_NAME not in html


@pytest.mark.parametrize("name", ["pretraining", "classification"])
def test_range_test_page_in_browser(range_test_pages, browser, tmp_path, name):
    directory = range_test_pages[name]
    page = browser.open(directory / "index.html", screenshot=tmp_path / f"{name}.png")
    assert page.errors == [] and page.dialogs == [] and page.broken_images == []
    assert [image["src"] for image in page.images][-1] == "range_test.png"
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "Suggested learning rate" in page.text and "--p-learning-rate" in page.text
    if name == "classification":
        assert EVIL_NAME in page.text


def test_find_learning_rate_needs_distances_or_metadata(aam, artifacts):
    table, sequences, _, _ = artifacts
    with pytest.raises(ValueError, match="Give a distance_matrix"):
        aam.visualizers.find_learning_rate(table=table, sequences=sequences, **TINY)


def test_find_learning_rate_refuses_an_empty_range(aam, artifacts):
    table, sequences, distance_matrix, _ = artifacts
    with pytest.raises(ValueError, match="must be smaller than max_learning_rate"):
        aam.visualizers.find_learning_rate(table=table, sequences=sequences,
                                           distance_matrix=distance_matrix, **TINY,
                                           min_learning_rate=0.1, max_learning_rate=0.01)


@pytest.mark.parametrize("example, output", [
    ("find_learning_rate_pretraining", "pretraining_range_test"),
    ("find_learning_rate_regression", "age_range_test")])
def test_find_learning_rate_examples_run(aam, example, output):
    from qiime2.sdk.usage import ExecutionUsage
    use = ExecutionUsage()
    aam.visualizers.find_learning_rate.examples[example](use)
    assert isinstance(use.render()[output].execute(), qiime2.Visualization)
