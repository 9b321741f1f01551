"""The one table of parameters: every action's registered parameters, their
defaults and the core's presets agree with it; values reach the right place."""
import inspect
import os

import numpy as np
import pytest
import torch

from q2_aam import _parameters
from q2_aam._parameters import (ACTIONS, PARAMETERS, configs, default, defaults,
                                takes_parameters)
from q2_aam.core.config import ModelConfig, TrainConfig
from q2_aam.plugin_setup import plugin

from conftest import TINY_MODEL

# Parameters an action registers beside the table's: the metadata it reads.
COLUMN_PARAMETERS = {"metadata", "truth"}


@pytest.mark.parametrize("action", sorted(plugin.actions))
def test_registered_parameters_and_defaults_are_the_tables(action):
    registered = plugin.actions[action].signature.parameters
    expected = defaults(action) if action in ACTIONS else {}
    assert set(registered) - COLUMN_PARAMETERS == set(expected)
    for name, value in expected.items():
        assert registered[name].default == value, name
        assert registered[name].description == PARAMETERS[name].description or \
            name in ("missing_samples", "kmer_size"), name    # reworded for two actions


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_function_signatures_read_the_table(action):
    function = plugin.actions[action]._callable
    signature = inspect.signature(function).parameters
    for name, value in defaults(action).items():
        assert signature[name].default == value, name


def test_a_drifting_signature_is_caught():
    # The check above compares against the table: a function whose own default
    # differs cannot be decorated into agreement silently.
    @takes_parameters("predict")
    def apply(model, **parameters):
        return parameters

    assert apply(None)["device"] == default("device", "fit")
    assert apply(None, device="cpu")["device"] == "cpu"
    with pytest.raises(TypeError):
        apply(None, devise="cpu")


def test_defaults_come_from_the_core_presets():
    fit, pretrain = TrainConfig.preset("fit"), TrainConfig.preset("pretrain")
    assert defaults("fit_regressor")["learning_rate"] == fit.learning_rate == 3e-4
    assert defaults("pretrain")["learning_rate"] == pretrain.learning_rate == 3e-3
    assert defaults("pretrain")["nuc_mask_ratio"] == 0.15
    assert defaults("fit_classifier")["nuc_mask_ratio"] == 0.0
    assert defaults("fit_regressor")["kmer_size"] == ModelConfig.preset("fit").kmer_size == 6
    assert ModelConfig.preset("pretrain").kmer_size == 0
    assert defaults("fit_regressor")["regression_loss"] == "auto"
    assert defaults("fit_regressor")["freeze_encoder"] is True
    for name, entry in PARAMETERS.items():
        core = {"model": ModelConfig, "train": TrainConfig}.get(entry.destination)
        if core is not None:
            assert (entry.field or name) in core.__dataclass_fields__, name


def test_values_are_routed_by_destination():
    values = {**defaults("fit_regressor"), "embedding_dim": 24, "attention_heads": 2,
              "learning_rate": 0.01, "random_state": 5, "lookup_neighbours": 0,
              "freeze_encoder": False}
    model_cfg, train_cfg, fit_keywords = configs("fit", values, task="regressor")
    assert (model_cfg.embedding_dim, model_cfg.task, model_cfg.kmer_size) == (24, "regressor", 6)
    assert (train_cfg.learning_rate, train_cfg.random_seed) == (0.01, 5)
    assert train_cfg.asv_dropout == 0.5
    assert fit_keywords == {"lookup_neighbours": 0, "freeze_encoder": False}


@pytest.mark.parametrize("n_jobs, expected", [(1, 1), (2, 2), (-1, None)])
def test_n_jobs_sets_torch_threads_while_an_action_runs(n_jobs, expected):
    @takes_parameters("predict")
    def apply(model, **parameters):
        return torch.get_num_threads()

    before = torch.get_num_threads()
    assert apply(None, n_jobs=n_jobs) == (expected or os.cpu_count())
    assert torch.get_num_threads() == before


def test_n_jobs_zero_is_refused():
    @takes_parameters("predict")
    def apply(model, **parameters):
        return None

    with pytest.raises(ValueError, match="n_jobs must be a number of threads"):
        apply(None, n_jobs=0)


def test_every_action_that_runs_torch_takes_n_jobs():
    for action, (_, names) in ACTIONS.items():
        if action not in ("scatterplot", "confusion_matrix"):
            assert "n_jobs" in names, action


def test_renamed_parameters_are_gone(aam, artifacts):
    table, sequences, distance_matrix, _ = artifacts
    for old in ("random_seed", "tensorboard_dir"):
        with pytest.raises(TypeError):
            aam.methods.pretrain(table=table, sequences=sequences,
                                 distance_matrix=distance_matrix, **{old: 0})


def test_without_random_state_a_seed_is_drawn_recorded_and_repeatable(aam, artifacts, capsys):
    table, sequences, distance_matrix, _ = artifacts
    settings = dict(**TINY_MODEL, epochs=1, batch_size=8, validation_fraction=0.25,
                    device="cpu")
    drawn, = aam.methods.pretrain(table=table, sequences=sequences,
                                  distance_matrix=distance_matrix, **settings)
    from q2_aam.core.bundle import ModelBundle
    first = drawn.view(ModelBundle)
    seed = first.info["training"]["random_seed"]
    assert f"--p-random-state {seed}" in capsys.readouterr().err
    again, = aam.methods.pretrain(table=table, sequences=sequences,
                                  distance_matrix=distance_matrix, random_state=seed,
                                  **settings)
    second = again.view(ModelBundle)
    for name, tensor in first.state_dict.items():
        np.testing.assert_array_equal(tensor.numpy(), second.state_dict[name].numpy())


def test_the_tensorboard_opt_in_is_an_environment_variable(aam, artifacts, monkeypatch,
                                                            tmp_path):
    table, sequences, distance_matrix, _ = artifacts
    settings = dict(**TINY_MODEL, epochs=1, batch_size=8, validation_fraction=0.25,
                    device="cpu", random_state=0)
    live = tmp_path / "live"
    monkeypatch.setenv(_parameters.TENSORBOARD_ENV, str(live))
    aam.methods.pretrain(table=table, sequences=sequences, distance_matrix=distance_matrix,
                         **settings)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(live))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv(_parameters.TENSORBOARD_ENV, str(blocked))
    with pytest.raises(ValueError, match=_parameters.TENSORBOARD_ENV):
        aam.methods.pretrain(table=table, sequences=sequences, distance_matrix=distance_matrix,
                             **settings)
    monkeypatch.delenv(_parameters.TENSORBOARD_ENV)
    assert _parameters.live_tensorboard_dir() == ""
