"""Tests of the QIIME 2 layer: the CLI, the AAMModel artifact type and its
validation, the pretrain action's input checks, learning through `qiime`, and
the plugin's usage examples."""
import json
import os
import shutil
import subprocess

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio
from qiime2.plugin.testing import TestPluginBase
from qiime2.sdk import usage

from conftest import TINY_MODEL, TINY_TRAINING
from q2_aam._examples import simulated, to_artifacts, to_views
from q2_aam.core.bundle import ModelBundle

FAIL_FAST = dict(TINY_MODEL, epochs=1, batch_size=4, validation_fraction=0.25, device="cpu",
                 min_epoch_steps=0)


def pretrain_action():
    from qiime2.plugins.aam.methods import pretrain
    return pretrain


def table_artifact(counts):
    table = biom.Table(counts.T.to_numpy(), observation_ids=list(counts.columns),
                       sample_ids=list(counts.index))
    return qiime2.Artifact.import_data("FeatureTable[Frequency]", table)


def sample_set(sim):
    from q2_aam.core.data import SampleSet
    return SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sim.sequences.to_dict(), 150, 1024)


# --- CLI and import ----------------------------------------------------------------


def test_cli_help(qiime):
    result = qiime("aam", "--help")
    assert result.returncode == 0, result.stderr
    assert "pretrain" in result.stdout
    assert "Attention All Microbes" in result.stdout


def test_plugin_import_does_not_import_torch(python_exe):
    code = ("import sys, q2_aam.plugin_setup, q2_aam._transformer; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert 'tensorboard' not in sys.modules, 'tensorboard was imported'")
    result = subprocess.run([python_exe, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, tiny_encoder):
    path = tmp_path_factory.mktemp("bundle") / "model"
    tiny_encoder.view(ModelBundle).save(str(path))
    return path


def test_import_valid_model_directory(qiime, bundle_dir, tmp_path):
    out = tmp_path / "model.qza"
    result = qiime("tools", "import", "--type", "AAMModel[Encoder]",
                   "--input-path", str(bundle_dir), "--output-path", str(out))
    assert result.returncode == 0, result.stderr
    artifact = qiime2.Artifact.load(str(out))
    assert str(artifact.type) == "AAMModel[Encoder]"
    artifact.validate(level="max")
    loaded = artifact.view(ModelBundle)
    assert loaded.model_config.embedding_dim == 16


def _remove(path, name):
    os.remove(path / name)


def _truncate(path, name):
    raw = (path / name).read_bytes()
    (path / name).write_bytes(raw[:len(raw) // 2])


def _garbage(path, name):
    (path / name).write_bytes(b"\x00\x01garbage, not safetensors" * 20)


def _bad_json(path, name):
    (path / name).write_text('{"model": {"embedding_dim": 16,')


def _no_model_section(path, name):
    config = json.loads((path / name).read_text())
    del config["model"]
    (path / name).write_text(json.dumps(config))


@pytest.mark.parametrize("corrupt, name, message", [
    (_remove, "model.safetensors", "model.safetensors"),
    (_truncate, "model.safetensors", "model.safetensors is not a readable safetensors file"),
    (_garbage, "model.safetensors", "model.safetensors is not a readable safetensors file"),
    (_bad_json, "config.json", "config.json is not valid JSON"),
    (_no_model_section, "config.json", "config.json lacks the 'model' section"),
    (_remove, "history.tsv", "history.tsv"),
], ids=["missing-weights", "truncated-weights", "garbage-weights", "invalid-json",
        "no-model-section", "missing-history"])
def test_import_corrupt_model_directory_fails(qiime, bundle_dir, tmp_path, corrupt, name,
                                              message):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    corrupt(broken, name)
    out = tmp_path / "model.qza"
    result = qiime("tools", "import", "--type", "AAMModel[Encoder]",
                   "--input-path", str(broken), "--output-path", str(out))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not out.exists()


# --- artifact round trip -------------------------------------------------------------


def test_artifact_round_trip_gives_identical_embeddings(tiny_encoder, sim, tmp_path):
    import torch
    from q2_aam.core.train import predict_outputs

    path = str(tmp_path / "encoder.qza")
    tiny_encoder.save(path)
    loaded = qiime2.Artifact.load(path)
    assert str(loaded.type) == "AAMModel[Encoder]"
    original, restored = tiny_encoder.view(ModelBundle), loaded.view(ModelBundle)
    assert restored.model_config == original.model_config
    assert restored.info == original.info
    for key, tensor in original.state_dict.items():
        assert torch.equal(restored.state_dict[key], tensor), key
    pd.testing.assert_frame_equal(restored.history, original.history)
    data = sample_set(sim)
    idx = np.arange(len(data))
    cpu = torch.device("cpu")
    a = predict_outputs(original.build_model(), data, idx, 8, cpu)["sample_embeddings"]
    b = predict_outputs(restored.build_model(), data, idx, 8, cpu)["sample_embeddings"]
    assert a.shape == (len(data), 16) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_tiny_encoder_contents(tiny_encoder, sim):
    bundle = tiny_encoder.view(ModelBundle)
    assert bundle.task == "encoder"
    assert bundle.info["n_samples"] == len(sim.counts)
    assert len(bundle.history) == 3
    assert bundle.info["best_epoch"] in (1, 2, 3)
    assert {"train/unifrac_loss", "val/unifrac_r2"} <= set(bundle.history.columns)
    assert bundle.validation is not None and len(bundle.validation) == 8 * 7 // 2
    assert bundle.event_files                   # TensorBoard event files were kept


# --- bad input to pretrain --------------------------------------------------------------


def test_features_without_sequences(artifacts, sim):
    table, _, distance_matrix, _ = artifacts
    present = sim.counts.columns[(sim.counts > 0).any()]
    dropped = list(present[:3])
    sequences = qiime2.Artifact.import_data(
        "FeatureData[Sequence]",
        pd.Series({k: skbio.DNA(v) for k, v in sim.sequences.items() if k not in dropped}))
    with pytest.raises(ValueError, match=r"3 feature\(s\) in the table have no sequence") as err:
        pretrain_action()(table=table, sequences=sequences, distance_matrix=distance_matrix,
                          **FAIL_FAST)
    assert dropped[0] in str(err.value)


def test_distance_matrix_lacking_samples(artifacts, sim):
    table, sequences, _, _ = artifacts
    ids = list(sim.unifrac.index)
    missing, kept = ids[:2], ids[2:]
    dm = skbio.DistanceMatrix(sim.unifrac.loc[kept, kept].to_numpy(), ids=kept)
    with pytest.raises(ValueError, match=r"lacks 2 sample\(s\) of the table") as err:
        pretrain_action()(table=table, sequences=sequences,
                          distance_matrix=qiime2.Artifact.import_data("DistanceMatrix", dm),
                          **FAIL_FAST)
    for sample_id in missing:
        assert sample_id in str(err.value)


def test_distances_outside_unit_interval(artifacts, sim):
    table, sequences, _, _ = artifacts
    dm = skbio.DistanceMatrix(sim.unifrac.to_numpy() * 1.5, ids=list(sim.unifrac.index))
    with pytest.raises(ValueError, match=r"Distances must lie in \[0, 1\]"):
        pretrain_action()(table=table, sequences=sequences,
                          distance_matrix=qiime2.Artifact.import_data("DistanceMatrix", dm),
                          **FAIL_FAST)


def test_zero_count_samples_are_dropped(artifacts, sim, capsys):
    _, sequences, distance_matrix, _ = artifacts
    counts = sim.counts.copy()
    zeroed = list(counts.index[[3, 10]])
    counts.loc[zeroed] = 0
    # The distance matrix still holds the dropped samples: extras are ignored.
    result = pretrain_action()(table=table_artifact(counts), sequences=sequences,
                               distance_matrix=distance_matrix, **FAIL_FAST)
    assert "Dropping 2 sample(s) with zero counts" in capsys.readouterr().err
    bundle = result.encoder.view(ModelBundle)
    assert bundle.info["n_samples"] == len(counts) - 2
    assert not set(zeroed) & set(bundle.info["train_samples"])
    assert np.isfinite(bundle.history["train/loss"]).all()


def test_too_few_samples_after_dropping_zero_counts(artifacts, sim):
    _, sequences, distance_matrix, _ = artifacts
    counts = sim.counts.copy()
    counts.iloc[3:] = 0
    with pytest.raises(ValueError, match="3 samples are too few for validation_fraction"):
        pretrain_action()(table=table_artifact(counts), sequences=sequences,
                          distance_matrix=distance_matrix, **FAIL_FAST)
    counts.iloc[:] = 0
    with pytest.raises(ValueError, match=r"Only 0 sample\(s\) with non-zero counts remain"):
        pretrain_action()(table=table_artifact(counts), sequences=sequences,
                          distance_matrix=distance_matrix, **FAIL_FAST)


def test_too_few_samples_for_validation_split(artifacts, sim):
    _, sequences, distance_matrix, _ = artifacts
    table = table_artifact(sim.counts.iloc[:4])
    with pytest.raises(ValueError, match=r"4 samples are too few for validation_fraction=0.25"):
        pretrain_action()(table=table, sequences=sequences, distance_matrix=distance_matrix,
                          **FAIL_FAST)
    single = table_artifact(sim.counts.iloc[:1])
    with pytest.raises(ValueError, match=r"training needs at least 2 samples"):
        pretrain_action()(table=single, sequences=sequences, distance_matrix=distance_matrix,
                          **dict(FAIL_FAST, validation_fraction=0.0))


def test_empty_table(artifacts):
    _, sequences, distance_matrix, _ = artifacts
    empty = qiime2.Artifact.import_data("FeatureTable[Frequency]",
                                        biom.Table(np.zeros((0, 0)), [], []))
    with pytest.raises(ValueError, match="The feature table is empty"):
        pretrain_action()(table=empty, sequences=sequences, distance_matrix=distance_matrix,
                          **FAIL_FAST)


@pytest.mark.parametrize("bad", ["-", "."])
def test_sequences_with_gaps(sim, bad):
    # q2-types refuses a gapped FeatureData[Sequence], so the action's function
    # is called with views: the check must hold for any caller.
    from q2_aam._pretrain import pretrain
    table, sequences, distances, _ = to_views(sim)
    target = sim.counts.columns[0]
    raw = str(sequences[target])
    sequences = sequences.copy()
    sequences[target] = skbio.DNA(raw[:20] + bad * 3 + raw[23:])
    with pytest.raises(qiime2.core.exceptions.ValidationError, match="Invalid character"):
        qiime2.Artifact.import_data("FeatureData[Sequence]", sequences)
    with pytest.raises(ValueError, match=f"not IUPAC DNA bases: {bad!r}"):
        pretrain(table, sequences, distances, **FAIL_FAST)


def test_sequences_with_non_iupac_characters(sim):
    from q2_aam._pretrain import pretrain
    table, sequences, distances, _ = to_views(sim)
    sequences = sequences.copy()
    target = sim.counts.columns[1]
    sequences[target] = skbio.DNA(str(sequences[target])[:50] + "X", validate=False)
    with pytest.raises(ValueError, match="not IUPAC DNA bases: 'X'"):
        pretrain(table, sequences, distances, **FAIL_FAST)


# --- learning through the CLI ----------------------------------------------------------

# Settings found by experiment (seeds 0-5 of both simulator and training): the
# best-epoch validation UniFrac R^2 over all held-out pairs ranged 0.62-0.73;
# ~15-20 s on one CPU thread.
LEARN_SIM = dict(n_samples=120, n_asvs=120, seq_length=100, depth=1000, random_seed=0)
LEARN_ARGS = {"--p-embedding-dim": 48, "--p-attention-heads": 2, "--p-attention-layers": 1,
              "--p-epochs": 40, "--p-batch-size": 16, "--p-learning-rate": 0.01,
              "--p-warmup": 0.1, "--p-nuc-penalty": 0.2, "--p-validation-fraction": 0.2,
              "--p-device": "cpu", "--p-random-state": 0}


def test_cli_pretrain_learns_unifrac(qiime, tmp_path):
    from q2_aam.core.simulate import simulate
    table, sequences, distance_matrix, _ = to_artifacts(simulate(**LEARN_SIM))
    paths = {}
    for name, artifact in (("table", table), ("sequences", sequences),
                           ("distance-matrix", distance_matrix)):
        paths[name] = artifact.save(str(tmp_path / name))
    out = tmp_path / "encoder.qza"
    args = ["aam", "pretrain", "--verbose"]
    for name, path in paths.items():
        args += [f"--i-{name}", path]
    for key, value in LEARN_ARGS.items():
        args += [key, str(value)]
    result = qiime(*args, "--o-encoder", str(out), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best epoch" in result.stderr          # --verbose shows the engine's log
    bundle = qiime2.Artifact.load(str(out)).view(ModelBundle)
    history = bundle.history
    best = bundle.info["best_epoch"]
    r2 = history.loc[history["epoch"] == best, "val/unifrac_r2"].item()
    pearson = history.loc[history["epoch"] == best, "val/unifrac_pearson"].item()
    first = history["val/unifrac_r2"].iloc[0]
    assert r2 > 0.4, history[["epoch", "val/loss", "val/unifrac_r2"]].to_string()
    assert pearson > 0.7
    assert r2 > first + 0.3                         # it learned, not started there
    # The saved validation pairs are the held-out ones and agree with the history.
    detail = bundle.validation
    n_val = 24
    assert len(detail) == n_val * (n_val - 1) // 2
    assert not set(detail["sample_a"]) & set(bundle.info["train_samples"])
    ss_res = ((detail["true"] - detail["predicted"]) ** 2).sum()
    ss_tot = ((detail["true"] - detail["true"].mean()) ** 2).sum()
    assert 1 - ss_res / ss_tot == pytest.approx(r2, abs=1e-4)


# --- usage examples ----------------------------------------------------------------------


class TestUsageExamples(TestPluginBase):
    package = "q2_aam.tests"

    def test_execute_examples(self):
        self.execute_examples()

    def test_pretrain_example_output(self):
        example = self.plugin.actions["pretrain"].examples["pretrain_encoder"]
        use = usage.ExecutionUsage()
        example(use)
        records = use.render()
        assert "encoder" in records, sorted(records)
        records["encoder"].assert_output_type("AAMModel[Encoder]")
        bundle = records["encoder"].value.view(ModelBundle)
        assert len(bundle.history) == 2
        assert bundle.model_config.embedding_dim == 16

    def test_each_example_runs_its_own_action_alone(self):
        # q2galaxy makes each example a Galaxy tool test, and Galaxy runs one tool
        # per test: an example that trained a model first could never pass there.
        for action_id, action in self.plugin.actions.items():
            for name, example in action.examples.items():
                use = ActionRecordingUsage()
                example(use)
                assert use.action_ids == [action_id], (name, use.action_ids)

    def test_example_models_are_tiny_typed_and_trained_once(self):
        from q2_aam._examples import trained_model
        for task, semantic_type in (("encoder", "AAMModel[Encoder]"),
                                    ("regressor", "AAMModel[Regressor]"),
                                    ("classifier", "AAMModel[Classifier]")):
            model = trained_model(task)
            assert str(model.type) == semantic_type
            assert trained_model(task) is model          # cached: trained once a process
            bundle = model.view(ModelBundle)
            assert bundle.task == task
            assert bundle.model_config.embedding_dim == 16
            assert len(bundle.history) == 2
        classes = trained_model("classifier").view(ModelBundle).info["classes"]
        assert classes == sorted(simulated().metadata["site"].unique())


class ActionRecordingUsage(usage.Usage):
    """A usage driver that runs nothing and records the actions an example calls."""

    def __init__(self):
        super().__init__()
        self.action_ids = []

    def action(self, action, inputs, outputs):
        self.action_ids.append(action.action_id)
        return super().action(action, inputs, outputs)


def test_registered_names_cannot_collide_and_classes_are_described():
    from q2_aam.plugin_setup import plugin
    # QIIME 2 refuses to load every plugin when two register one name.
    assert all(name.startswith("AAM") for name in plugin.formats)
    assert set(plugin.type_fragments) == {"AAMModel", "Encoder",   # Encoder: see README
                                          "AAMPredictionIntervals"}
    assert set(plugin.artifact_classes) == {"AAMModel[Encoder]", "AAMModel[Regressor]",
                                            "AAMModel[Classifier]",
                                            "SampleData[AAMPredictionIntervals]"}
    assert all(record.description for record in plugin.artifact_classes.values())


def tree_artifact(sim):
    import io
    tree = skbio.TreeNode.read(io.StringIO(sim.tree.to_newick()))
    return qiime2.Artifact.import_data("Phylogeny[Rooted]", tree)


def test_cli_pretrain_from_the_tree_learns_unifrac(qiime, tmp_path):
    from q2_aam.core.simulate import simulate
    sim = simulate(**LEARN_SIM)
    table, sequences, _, _ = to_artifacts(sim)
    args = ["aam", "pretrain"]
    for name, artifact in (("table", table), ("sequences", sequences),
                           ("phylogeny", tree_artifact(sim))):
        args += [f"--i-{name}", artifact.save(str(tmp_path / name))]
    for key, value in LEARN_ARGS.items():
        args += [key, str(value)]
    out = tmp_path / "encoder.qza"
    result = qiime(*args, "--o-encoder", str(out), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = qiime2.Artifact.load(str(out)).view(ModelBundle)
    history = bundle.history
    r2 = history.loc[history["epoch"] == bundle.info["best_epoch"], "val/unifrac_r2"].item()
    assert r2 > 0.4, history[["epoch", "val/loss", "val/unifrac_r2"]].to_string()
    # The held-out pairs' true distances are the tree's UniFrac, the simulator's too.
    detail = bundle.validation.iloc[:50]
    expected = sim.unifrac.to_numpy()[
        [sim.unifrac.index.get_loc(a) for a in detail["sample_a"]],
        [sim.unifrac.index.get_loc(b) for b in detail["sample_b"]]]
    np.testing.assert_allclose(detail["true"], expected, atol=1e-6)


def test_pretrain_needs_exactly_one_source_of_unifrac(artifacts, sim):
    from qiime2.plugins import aam
    table, sequences, distance_matrix, _ = artifacts
    with pytest.raises(ValueError, match="Pretraining needs UniFrac targets"):
        aam.methods.pretrain(table=table, sequences=sequences, **TINY_MODEL, **TINY_TRAINING)
    with pytest.raises(ValueError, match="either distance_matrix or phylogeny, not both"):
        aam.methods.pretrain(table=table, sequences=sequences, distance_matrix=distance_matrix,
                             phylogeny=tree_artifact(sim), **TINY_MODEL, **TINY_TRAINING)


def test_a_tree_without_the_tables_features_is_explained(artifacts, sim):
    import io
    from qiime2.plugins import aam
    table, sequences, _, _ = artifacts
    renamed = skbio.TreeNode.read(io.StringIO(sim.tree.to_newick()))
    for tip in renamed.tips():
        tip.name = "x" + tip.name
    tree = qiime2.Artifact.import_data("Phylogeny[Rooted]", renamed)
    with pytest.raises(ValueError, match="feature"):
        aam.methods.pretrain(table=table, sequences=sequences, phylogeny=tree, **TINY_MODEL,
                             **TINY_TRAINING)


# --- several devices ----------------------------------------------------------------------


def test_cli_pretrain_on_two_devices_matches_one_device(qiime, aam, artifacts, tmp_path):
    table, sequences, distance_matrix, _ = artifacts
    # SGD: the two runs differ by float round-off only, which SGD does not amplify
    # (Adam's step normalization can; tests/test_distributed.py says more).
    settings = dict(**TINY_MODEL, epochs=2, batch_size=8, validation_fraction=0.25,
                    device="cpu", random_state=0, optimizer="sgd", learning_rate=0.05)
    args = ["aam", "pretrain", "--verbose", "--p-n-devices", "2", "--p-n-jobs", "2"]
    for name, artifact in (("table", table), ("sequences", sequences),
                           ("distance-matrix", distance_matrix)):
        args += [f"--i-{name}", artifact.save(str(tmp_path / name))]
    for key, value in settings.items():
        args += [f"--p-{key.replace('_', '-')}", str(value)]
    out = tmp_path / "encoder.qza"
    result = qiime(*args, "--o-encoder", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training on 2 processes (cpu each)" in result.stderr
    two = qiime2.Artifact.load(str(out))
    assert str(two.type) == "AAMModel[Encoder]"
    one, = aam.methods.pretrain(table=table, sequences=sequences,
                                distance_matrix=distance_matrix, **settings)
    assert two.view(ModelBundle).info["best_epoch"] == one.view(ModelBundle).info["best_epoch"]
    predicted = [aam.methods.predict_distances(encoder=model, table=table, sequences=sequences,
                                               device="cpu").distance_matrix.view(
                                                   skbio.DistanceMatrix).data
                 for model in (one, two)]
    assert np.isfinite(predicted[1]).all() and predicted[1].max() > 0
    np.testing.assert_allclose(predicted[1], predicted[0], atol=1e-3)


def test_more_devices_than_the_batch_is_refused_before_training(aam, artifacts):
    table, sequences, distance_matrix, _ = artifacts
    with pytest.raises(ValueError, match=r"batch_size \(4\) is smaller than the number of "
                                         r"processes \(5\)"):
        aam.methods.pretrain(table=table, sequences=sequences, distance_matrix=distance_matrix,
                             **{**FAIL_FAST, "n_devices": 5})


def test_a_frozen_fit_on_two_devices_matches_one_device(aam, artifacts, tiny_encoder):
    table, sequences, _, metadata = artifacts
    settings = dict(epochs=2, batch_size=8, validation_fraction=0.25, device="cpu",
                    random_state=0, optimizer="sgd", learning_rate=0.05, lookup_neighbours=0)
    fits = [aam.methods.fit_regressor(table=table, sequences=sequences,
                                      metadata=metadata.get_column("age"),
                                      pretrained_encoder=tiny_encoder, n_devices=n,
                                      **settings).model for n in (1, 2)]
    predicted = [aam.methods.predict(model=model, table=table, sequences=sequences,
                                     device="cpu").predictions.view(pd.Series)
                 for model in fits]
    std = fits[0].view(ModelBundle).info["target_scaling"]["std"]
    np.testing.assert_allclose(predicted[1], predicted[0], atol=1e-3 * std)
