"""Hostile but honest inputs (issue 18): each gives a clear error naming the
problem and the fix, never a silent wrong answer, a lost model or a crash.

1. A TensorBoard directory is written live but never read back into the model.
2. Table counts must be finite and non-negative; zero-count samples are reported.
3. No action writes non-finite numbers.
4. Validation never crashes, whatever a model file holds.
5. Validation at level 'max' proves that the model loads and answers.
6. Messages: the split-size advice, an unusable TensorBoard directory, SIGTERM.

Ends with a property-style test: many random mutations of a valid model
directory either fail validation cleanly or leave a model that predicts.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import torch
from qiime2.plugin import ValidationError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from conftest import REPO, TINY_MODEL, TINY_TRAINING
from q2_aam.core.bundle import ModelBundle

FAST = {**TINY_MODEL, **TINY_TRAINING, "epochs": 2}
TENSORBOARD_SETTING = r"(Q2_AAM_TENSORBOARD_DIR|tensorboard_dir)"


def tensorboard_env():
    from q2_aam._parameters import TENSORBOARD_ENV
    return TENSORBOARD_ENV


def table_artifact(counts):
    """A FeatureTable[Frequency] of a samples x features DataFrame."""
    table = biom.Table(counts.T.to_numpy(dtype=float), observation_ids=list(counts.columns),
                       sample_ids=list(counts.index))
    return qiime2.Artifact.import_data("FeatureTable[Frequency]", table)


def import_model(directory, task="Regressor"):
    return qiime2.Artifact.import_data(f"AAMModel[{task}]", str(directory))


@pytest.fixture(scope="module")
def models(aam, artifacts, sim, tmp_path_factory):
    """A tiny regressor (always with a neighbour look-up) and classifier, as
    saved model directories, fitted once for the module."""
    from q2_aam.core.data import SampleSet
    from q2_aam.core.lookup import NeighbourLookup
    table, sequences, _, metadata = artifacts
    regressor, = aam.methods.fit_regressor(table=table, sequences=sequences,
                                           metadata=metadata.get_column("age"), **FAST)
    classifier, = aam.methods.fit_classifier(table=table, sequences=sequences,
                                             metadata=metadata.get_column("site"), **FAST)
    root = tmp_path_factory.mktemp("models")
    bundle = regressor.view(ModelBundle)
    if bundle.lookup is None:       # whether the tiny fit keeps one depends on its validation
        data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index),
                         list(sim.counts.columns), sim.sequences.to_dict(), 150, 1024)
        bundle.lookup = NeighbourLookup.from_samples(
            data, np.arange(len(data)), sim.metadata["age"].to_numpy(float), 3, 0.5).to_arrays()
        bundle.info["neighbour_lookup"] = {"neighbours": 3, "tolerance": 0.5}
    bundle.save(str(root / "regressor"))
    classifier.view(ModelBundle).save(str(root / "classifier"))
    return {"regressor": root / "regressor", "classifier": root / "classifier"}


@pytest.fixture
def copy_of(models, tmp_path):
    def copy(task):
        target = tmp_path / task
        shutil.copytree(models[task], target)
        return target
    return copy


def predict_series(aam, model, artifacts):
    table, sequences, _, _ = artifacts
    predicted, = aam.methods.predict(model=model, table=table, sequences=sequences)
    return predicted.view(pd.Series)


# --- 1. the TensorBoard directory -----------------------------------------------------


def test_live_tensorboard_dir_is_never_read_into_the_model(aam, artifacts, tmp_path,
                                                           monkeypatch):
    live = tmp_path / "live"
    (live / "earlier").mkdir(parents=True)
    (live / "notes.txt").write_text("mine\n")          # too short for an event file
    (live / "events.out.tfevents.1.stale").write_bytes(b"stale events of an earlier run")
    (live / "earlier" / "model.qza").write_bytes(b"PK\x03\x04 an artifact")
    before = {p for p in live.rglob("*")}
    monkeypatch.setenv(tensorboard_env(), str(live))
    table, sequences, distance_matrix, _ = artifacts
    encoder, = aam.methods.pretrain(table=table, sequences=sequences,
                                    distance_matrix=distance_matrix, **FAST)
    events = encoder.view(ModelBundle).event_files
    assert len(events) == 1
    (name, content), = events.items()
    assert name.startswith("events.out.tfevents.") and b"stale" not in content
    assert b"train/loss" in content
    written = {p for p in live.rglob("*")} - before
    assert [p.name for p in written if "tfevents" in p.name], "nothing was written live"
    assert (live / "notes.txt").read_text() == "mine\n"


def test_unusable_tensorboard_dir_fails_before_training(aam, artifacts, tmp_path,
                                                        monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(tensorboard_env(), str(blocker / "runs"))
    table, sequences, distance_matrix, _ = artifacts
    with pytest.raises(ValueError, match=TENSORBOARD_SETTING +
                       r": cannot write TensorBoard event files to .*a-file/runs"):
        aam.methods.pretrain(table=table, sequences=sequences,
                             distance_matrix=distance_matrix, **FAST)
    assert "epoch 1" not in capsys.readouterr().err


SIGTERM_SCRIPT = """
from q2_aam.core.config import ModelConfig, TrainConfig
from q2_aam.core.data import SampleSet
from q2_aam.core.pretrain import pretrain
from q2_aam.core.simulate import simulate
sim = simulate(n_samples=16, n_asvs=20, seq_length=60, depth=200, random_seed=0)
data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                 sim.sequences.to_dict(), 150, 1024)
data.distances = sim.unifrac.to_numpy().astype("float32")
pretrain(data, ModelConfig(embedding_dim=8, attention_heads=2, attention_layers=1),
         TrainConfig(epochs=100000, patience=100000, batch_size=4, device="cpu"))
"""


def test_sigterm_during_training_leaves_no_temporary_directory(tmp_path):
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch_root), PYTHONPATH=REPO)
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:     # a file, not a pipe: a full pipe would block training
        process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in scratch_root.iterdir() if p.is_dir()]:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        time.sleep(1.0)                  # well inside the training loop
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert not list(scratch_root.iterdir())


# --- 2. table counts --------------------------------------------------------------------


def test_infinite_counts_are_refused_by_predict(aam, artifacts, models, sim):
    counts = sim.counts.astype(float)
    sample, feature = counts.index[4], counts.columns[7]
    counts.loc[sample, feature] = np.inf
    with pytest.raises(ValueError, match=rf"negative, infinite or missing.*inf for feature "
                                         rf"{re.escape(feature)} in sample {re.escape(sample)}"
                                         rf".*finite and at least 0"):
        aam.methods.predict(model=import_model(models["regressor"]),
                            table=table_artifact(counts), sequences=artifacts[1])


def test_negative_counts_are_refused_before_training(aam, artifacts, sim, capsys):
    counts = sim.counts.astype(float)
    sample = counts.index[2]
    counts.loc[sample] = -counts.loc[sample]       # a sample of only negative counts
    with pytest.raises(ValueError, match=rf"1 sample\(s\) \({re.escape(sample)}\) and"):
        aam.methods.fit_regressor(table=table_artifact(counts), sequences=artifacts[1],
                                  metadata=artifacts[3].get_column("age"), **FAST)
    assert "Training on" not in capsys.readouterr().err


def test_zero_count_samples_are_reported_without_verbose(qiime, models, artifacts, sim,
                                                         tmp_path):
    counts = sim.counts.copy()
    counts.loc[counts.index[[1, 5]]] = 0
    table_artifact(counts).save(str(tmp_path / "table.qza"))
    artifacts[1].save(str(tmp_path / "sequences.qza"))
    import_model(models["regressor"]).save(str(tmp_path / "model.qza"))
    result = qiime("aam", "predict", "--i-model", str(tmp_path / "model.qza"),
                   "--i-table", str(tmp_path / "table.qza"),
                   "--i-sequences", str(tmp_path / "sequences.qza"),
                   "--o-predictions", str(tmp_path / "predictions.qza"))
    assert result.returncode == 0, result.stderr
    assert "Dropping 2 sample(s) with zero counts" in result.stderr
    assert counts.index[1] in result.stderr and counts.index[5] in result.stderr


# --- 3. nothing non-finite is written ---------------------------------------------------


def damaged(directory, task, changes):
    """The model at `directory` with tensors set by `changes` {name: value}, as an
    artifact (imported from the bundle: validation at level 'min', as any
    action's input gets)."""
    bundle = ModelBundle.load(str(directory))
    for name, value in changes.items():
        bundle.state_dict[name] = torch.full_like(bundle.state_dict[name], value)
    return qiime2.Artifact.import_data(f"AAMModel[{task}]", bundle)


def test_predict_refuses_to_write_non_finite_predictions(aam, artifacts, models):
    table, sequences, _, _ = artifacts
    model = damaged(models["regressor"], "Regressor", {"target_head.1.weight": 3e38})
    with pytest.raises(ValueError, match=r"non-finite \(NaN or infinite\) predictions for \d+ "
                                         r"of 32 sample.*reach 3e\+38 \(in target_head.1.weight"
                                         r"\).*Re-fit the model"):
        aam.methods.predict(model=model, table=table, sequences=sequences)
    nan_weights = damaged(models["regressor"], "Regressor", {"target_head.1.bias": np.nan})
    with pytest.raises(ValueError, match=r"NaN or infinite weights \(in 'target_head.1.bias'\)"
                                         r".*Re-fit"):
        aam.methods.predict(model=nan_weights, table=table, sequences=sequences)


def test_classifier_actions_refuse_non_finite_probabilities(aam, artifacts, models):
    table, sequences, _, _ = artifacts
    model = damaged(models["classifier"], "Classifier", {"target_head.1.weight": 3e38})
    for action in (aam.methods.predict, aam.methods.predict_probabilities):
        with pytest.raises(ValueError, match=r"non-finite \(NaN or infinite\) class "
                                             r"probabilities"):
            action(model=model, table=table, sequences=sequences)


def test_embed_and_predict_distances_refuse_non_finite_values(aam, artifacts, models,
                                                              tiny_encoder, tmp_path):
    table, sequences, _, _ = artifacts
    model = damaged(models["regressor"], "Regressor", {"sample_encoder.ln.weight": 3e38})
    with pytest.raises(ValueError, match=r"non-finite \(NaN or infinite\) sample embeddings"):
        aam.methods.embed(model=model, table=table, sequences=sequences)
    tiny_encoder.view(ModelBundle).save(str(tmp_path / "encoder"))
    encoder = damaged(tmp_path / "encoder", "Encoder", {"distance_log_scale": 1000.0})
    with pytest.raises(ValueError, match=r"non-finite \(NaN or infinite\) distances.*"
                                         r"distance_log_scale"):
        aam.methods.predict_distances(encoder=encoder, table=table, sequences=sequences)


# --- 4. validation never crashes -----------------------------------------------------------


def edit_json(path, change):
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _model_section_is_a_list(d):
    edit_json(d / "config.json", lambda c: c.update(model=[]))


def _deeply_nested_config(d):
    (d / "config.json").write_text('{"format_version": 1, "model": {}, "info": '
                                   + "[" * 100000 + "]" * 100000 + "}")


def _binary_history(d):
    (d / "history.tsv").write_bytes(bytes(range(256)) * 4)


def _string_sizes(d):
    edit_json(d / "config.json", lambda c: c["model"].update(embedding_dim="16"))


@pytest.mark.parametrize("corrupt, message", [
    (_model_section_is_a_list, "'model' must be a JSON object, not a list"),
    (_deeply_nested_config, "config.json is nested too deeply"),
    (_binary_history, "history.tsv is not UTF-8 text"),
    (_string_sizes, 'embedding_dim must be an integer from 0 to 2147483647, not "16"'),
], ids=["model-list", "deep-json", "binary-history", "string-size"])
def test_validation_fails_cleanly_on_malformed_files(copy_of, corrupt, message):
    directory = copy_of("regressor")
    corrupt(directory)
    with pytest.raises(ValidationError, match=message):
        import_model(directory)


def test_cli_import_of_a_binary_history_is_a_validation_error(qiime, copy_of, tmp_path):
    directory = copy_of("regressor")
    _binary_history(directory)
    result = qiime("tools", "import", "--type", "AAMModel[Regressor]", "--input-path",
                   str(directory), "--output-path", str(tmp_path / "model.qza"))
    assert result.returncode != 0
    assert "unexpected error" not in result.stderr.lower(), result.stderr
    assert "history.tsv is not UTF-8 text" in result.stderr, result.stderr


# --- 5. validation at level 'max' proves the model loads and answers -------------------


def edit_weights(path, change):
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def edit_lookup(path, change):
    arrays = load_arrays(str(path))
    change(arrays)
    save_arrays(arrays, str(path))


def _wider_config(d):
    edit_json(d / "config.json", lambda c: c["model"].update(embedding_dim=32))


def _missing_tensor(d):
    edit_weights(d / "model.safetensors", lambda t: t.pop("nuc_head.bias"))


def _extra_tensor(d):
    edit_weights(d / "model.safetensors", lambda t: t.update(stowaway=torch.zeros(3)))


def _int64_tensor(d):
    edit_weights(d / "model.safetensors",
                 lambda t: t.update({"nuc_head.bias": t["nuc_head.bias"].to(torch.int64)}))


def _float16_tensor(d):
    edit_weights(d / "model.safetensors", lambda t: t.update(
        {"target_head.1.weight": t["target_head.1.weight"].half()}))


def _no_target_scaling(d):
    edit_json(d / "config.json", lambda c: c.update(info={}))


def _lookup_out_of_range(d):
    edit_lookup(d / "lookup.safetensors", lambda a: a["indices"].__setitem__(0, 10 ** 6))


def _lookup_unsorted_indptr(d):
    edit_lookup(d / "lookup.safetensors", lambda a: a.update(indptr=a["indptr"][::-1].copy()))


@pytest.mark.parametrize("corrupt, message", [
    (_wider_config, r"do not match the model configuration.*another shape"),
    (_missing_tensor, r"lack 1 tensor\(s\) the configuration needs \('nuc_head.bias'\)"),
    (_extra_tensor, r"hold 1 tensor\(s\) the configuration has no place for \('stowaway'\)"),
    (_int64_tensor, r"float32 weights.*nuc_head.bias is int64"),
    (_float16_tensor, r"float32 weights.*target_head.1.weight is float16"),
    (_no_target_scaling, r"needs 'target_scaling' with a finite 'mean'"),
    (_lookup_out_of_range, r"lookup.safetensors: 'indices' must point at the \d+ ASV"),
    (_lookup_unsorted_indptr, r"lookup.safetensors: 'indptr' must rise from 0"),
], ids=["config-wider", "missing-tensor", "extra-tensor", "int64", "float16",
        "no-target-scaling", "lookup-indices", "lookup-indptr"])
def test_max_validation_refuses_a_regressor_that_would_not_answer(copy_of, corrupt, message):
    directory = copy_of("regressor")
    corrupt(directory)
    with pytest.raises(ValidationError, match=message):
        import_model(directory)
    with pytest.raises(ValueError, match=message):     # loading refuses it too
        ModelBundle.load(str(directory))


def _one_class_fewer(d):
    edit_json(d / "config.json", lambda c: c["info"].update(classes=c["info"]["classes"][:-1]))


def _no_classes(d):
    edit_json(d / "config.json", lambda c: c["info"].pop("classes"))


@pytest.mark.parametrize("corrupt, message", [
    (_one_class_fewer, r"'classes' names 2 labels but the model has 3 outputs"),
    (_no_classes, r"needs 'classes', a list of at least 2 distinct labels"),
], ids=["classes-fewer-than-outputs", "no-classes"])
def test_max_validation_refuses_a_classifier_that_would_not_answer(copy_of, corrupt, message):
    directory = copy_of("classifier")
    corrupt(directory)
    with pytest.raises(ValidationError, match=message):
        import_model(directory, "Classifier")


def test_valid_models_pass_max_validation_and_answer(aam, artifacts, models):
    for task in ("Regressor", "Classifier"):
        model = import_model(models[task.lower()], task)
        model.validate(level="max")
        assert predict_series(aam, model, artifacts).notna().all()


# --- 6. messages ------------------------------------------------------------------------


def test_split_advice_without_validation_does_not_suggest_it(aam, artifacts, sim):
    table, sequences, distance_matrix, _ = artifacts
    with pytest.raises(ValueError, match=r"training needs at least 2 samples") as error:
        aam.methods.pretrain(table=table_artifact(sim.counts.iloc[:1]), sequences=sequences,
                             distance_matrix=distance_matrix,
                             **{**FAST, "validation_fraction": 0.0})
    assert "validation_fraction" not in str(error.value)


# --- property: whatever the files hold, validation passes or fails cleanly -----------------


def _json_paths(value, path=()):
    yield path
    children = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _json_paths(child, path + (key,))


def _set_at(value, path, new):
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


def _delete_at(value, path):
    for key in path[:-1]:
        value = value[key]
    del value[path[-1]]


ODD_JSON = [[], {}, "", "16", -1, 0, 1, 2.5, 10 ** 30, 2 ** 31, 1e308, None, True, False,
            float("nan"), float("inf"), [1, 2], {"a": {"b": [None]}}]


def mutate(directory, rng):
    """Change the model directory in one of many ways; returns a description."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    path = files[rng.integers(len(files))]
    kind = rng.choice(["bytes", "truncate", "remove", "extra-file", "json-value", "json-delete",
                       "json-nest", "tensor", "lookup", "table"])
    raw = path.read_bytes()
    if kind == "bytes" and raw:
        data = bytearray(raw)
        for position in rng.integers(len(data), size=rng.integers(1, 9)):
            data[position] = rng.integers(256)
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(raw[:rng.integers(len(raw) + 1)])
    elif kind == "remove":
        path.unlink()
    elif kind == "extra-file":
        where = rng.choice(["stray.txt", "tensorboard/stray", "sub/stray.bin"])
        (directory / where).parent.mkdir(parents=True, exist_ok=True)
        (directory / where).write_bytes(rng.bytes(rng.integers(0, 64)))
    elif kind in ("json-value", "json-delete", "json-nest"):
        config = json.loads((directory / "config.json").read_text())
        paths = [p for p in _json_paths(config) if p]
        target = paths[rng.integers(len(paths))]
        if kind == "json-value":
            _set_at(config, target, ODD_JSON[rng.integers(len(ODD_JSON))])
        elif kind == "json-delete":
            _delete_at(config, target)
        else:
            nested = "x"
            for _ in range(rng.integers(30, 3000)):
                nested = [nested]
            _set_at(config, target, nested)
        try:
            text = json.dumps(config, allow_nan=True)
        except RecursionError:
            text = "[" * 5000 + "]" * 5000
        (directory / "config.json").write_text(text)
    elif kind == "tensor":
        tensors = load_file(str(directory / "model.safetensors"))
        names = sorted(tensors)
        name = names[rng.integers(len(names))]
        change = rng.choice(["drop", "add", "shape", "dtype", "value", "rename"])
        if change == "drop":
            del tensors[name]
        elif change == "add":
            tensors["extra.weight"] = torch.zeros(int(rng.integers(1, 5)))
        elif change == "shape":
            tensors[name] = torch.zeros(tensors[name].numel() + 1)
        elif change == "dtype":
            dtype = [torch.float16, torch.float64, torch.bfloat16, torch.int64,
                     torch.uint8][rng.integers(5)]
            tensors[name] = tensors[name].to(dtype)
        elif change == "value":
            tensors[name] = torch.full_like(tensors[name], [np.nan, np.inf, 1e30, 0.0][
                rng.integers(4)])
        else:
            tensors[name + ".renamed"] = tensors.pop(name)
        save_file(tensors, str(directory / "model.safetensors"))
        kind = f"tensor-{change}"
    elif kind == "lookup" and (directory / "lookup.safetensors").exists():
        arrays = load_arrays(str(directory / "lookup.safetensors"))
        name = sorted(arrays)[rng.integers(len(arrays))]
        change = rng.choice(["dtype", "values", "drop", "empty"])
        if change == "dtype":
            arrays[name] = arrays[name].astype([np.int32, np.float32, np.uint8][rng.integers(3)])
        elif change == "values":
            arrays[name] = arrays[name].copy()
            arrays[name].flat[rng.integers(arrays[name].size)] = \
                [-1, 255, 10 ** 6][rng.integers(3)] if arrays[name].dtype.kind in "iu" \
                else np.nan
        elif change == "drop":
            del arrays[name]
        else:
            arrays[name] = arrays[name][:0]
        save_arrays(arrays, str(directory / "lookup.safetensors"))
        kind = f"lookup-{change}"
    elif kind == "table":
        table = directory / ["history.tsv", "validation.tsv"][rng.integers(2)]
        table.write_bytes([b"", b"\x00\x00\t\x00\n", b"epoch\tx\n1\t2\t3\n", b"a\n\"b\n",
                           b"only_a_header\n", "\u00e9poque\n1\n".encode("latin-1")][
            rng.integers(6)])
    return f"{kind} {path.relative_to(directory)}"


def test_mutated_model_directories_fail_validation_or_predict(aam, artifacts, models,
                                                              tmp_path):
    rng = np.random.default_rng(18)
    table, sequences, _, _ = artifacts
    small = table_artifact(artifacts[0].view(pd.DataFrame).iloc[:6])
    outcomes = {"refused": 0, "predicted": 0, "refused to write": 0}
    for trial in range(80):
        directory = tmp_path / f"trial{trial}"
        shutil.copytree(models["regressor"], directory)
        change = mutate(directory, rng)
        try:
            model = import_model(directory)
        except ValidationError:
            outcomes["refused"] += 1
            continue
        except Exception as err:
            pytest.fail(f"{change}: import raised {type(err).__name__}: {err}")
        try:
            model.validate(level="max")
            predicted, = aam.methods.predict(model=model, table=small, sequences=sequences)
        except ValueError as err:
            # Finite but extreme weights may still overflow on real samples.
            assert "non-finite" in str(err), f"{change}: {err}"
            outcomes["refused to write"] += 1
            continue
        except Exception as err:
            pytest.fail(f"{change}: valid model failed with {type(err).__name__}: {err}")
        assert np.isfinite(predicted.view(pd.Series)).all(), change
        outcomes["predicted"] += 1
    assert outcomes["refused"] >= 20 and outcomes["predicted"] >= 5, outcomes
