"""The code's layers: short functions, bench scripts on public APIs only, runs
that leave their inputs as they were, targets encoded one way, and the core
reading a feature table without QIIME 2."""
import ast
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse

from q2_aam.core.config import ModelConfig, TrainConfig
from q2_aam.core.data import SampleSet
from q2_aam.core.lr_finder import lr_range_test
from q2_aam.core.pretrain import pretrain
from q2_aam.core.supervised import fit
from q2_aam.core.targets import TargetCodec

REPO = pathlib.Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
TINY = dict(embedding_dim=16, attention_heads=2, attention_layers=1)
RUN = dict(epochs=2, batch_size=8, validation_fraction=0.25, device="cpu", nuc_mask_ratio=0.0)


def quiet(message):
    pass


# --- the code's shape ------------------------------------------------------------------


def test_no_function_in_the_package_is_longer_than_60_lines():
    """plugin_setup.py's registration calls are module-level statements, not functions."""
    long = []
    for path in sorted((REPO / "q2_aam").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _bench_scripts():
    return sorted((REPO / "bench").glob("*.py"))       # archive/ holds finished studies


@pytest.mark.parametrize("path", _bench_scripts(), ids=lambda p: p.name)
def test_bench_scripts_use_public_apis_only(path):
    tree = ast.parse(path.read_text(), str(path))
    modules, problems = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("q2_aam"):
            names = node.module.split(".") + [alias.name for alias in node.names]
            modules |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names = [part for alias in node.names if alias.name.startswith("q2_aam")
                     for part in alias.name.split(".")]
        else:
            continue
        problems += [f"line {node.lineno}: {name}" for name in names if name.startswith("_")]
    for node in ast.walk(tree):      # `module.function = ...` patches the library
        targets = node.targets if isinstance(node, ast.Assign) else []
        problems += [f"line {node.lineno}: assigns {t.value.id}.{t.attr}" for t in targets
                     if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                     and t.value.id in modules]
    assert not problems, problems


def test_the_supervised_core_imports_neither_qiime2_nor_biom():
    code = ("import sys, q2_aam.core.supervised, q2_aam.core.lr_finder, q2_aam.core.lookup; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qiime2', 'q2_types', 'q2cli', 'biom', 'skbio')); assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


# --- runs leave their inputs as they were -------------------------------------------------


@pytest.fixture(scope="module")
def data(sim):
    return SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sim.sequences.to_dict(), 100, 64)


@pytest.fixture(scope="module")
def encoder(sim, data):
    with_distances = data.replace(distances=sim.unifrac.to_numpy().astype(np.float32))
    return pretrain(with_distances, ModelConfig(**TINY), TrainConfig(**{**RUN, "epochs": 1}),
                    log=quiet)


def test_fits_leave_their_sample_set_unchanged(sim, data, encoder):
    before = pickle.dumps(vars(data))
    fit(data, sim.metadata["age"].to_numpy(), "regressor", ModelConfig(**TINY, ensemble_size=2),
        TrainConfig(**RUN), encoder=encoder, freeze_encoder=True, lookup_neighbours=2,
        log=quiet)
    fit(data, sim.metadata["site"].to_numpy(), "classifier", ModelConfig(**TINY),
        TrainConfig(**RUN), class_weights="balanced", log=quiet)
    lr_range_test(data, sim.metadata["age"].to_numpy(), "regressor", ModelConfig(**TINY),
                  TrainConfig(**RUN), steps=10, log=quiet)
    assert data.targets is None and data.asv_embedding_table is None
    assert pickle.dumps(vars(data)) == before


def test_a_fit_without_whitening_keeps_the_encoders_identity_whitening(sim, data, encoder):
    bundle = fit(data, sim.metadata["age"].to_numpy(), "regressor", ModelConfig(**TINY),
                 TrainConfig(**{**RUN, "epochs": 1}), encoder=encoder, freeze_encoder=True,
                 whitening_ridge=None, log=quiet)
    whitened = fit(data, sim.metadata["age"].to_numpy(), "regressor", ModelConfig(**TINY),
                   TrainConfig(**{**RUN, "epochs": 1}), encoder=encoder, freeze_encoder=True,
                   log=quiet)
    np.testing.assert_array_equal(bundle.state_dict["asv_whitening"], np.eye(16))
    assert not np.allclose(whitened.state_dict["asv_whitening"], np.eye(16))


def test_sample_set_replace_copies_and_refuses_unknown_attributes(data):
    labelled = data.replace(targets=np.zeros(len(data), dtype=np.int64))
    assert labelled.targets is not None and data.targets is None
    assert labelled.asv_ids is data.asv_ids        # shallow: nothing large is copied
    with pytest.raises(AttributeError, match="no attribute.*'target'"):
        data.replace(target=None)


# --- one target codec --------------------------------------------------------------------


def test_codec_encodes_and_decodes_through_a_models_info():
    ages = np.array([20.0, 30.0, 40.0, 50.0, 90.0])
    codec = TargetCodec.from_targets("regressor", ages, train_idx=[0, 1, 2, 3])
    assert (codec.mean, codec.std) == (35.0, float(np.std([20, 30, 40, 50])))
    again = TargetCodec.from_info("regressor", codec.to_info())
    np.testing.assert_allclose(again.decode_targets(codec.encode(ages)), ages, rtol=1e-6)
    np.testing.assert_allclose(again.decode(codec.encode(ages)[:, None])[0], ages, rtol=1e-6)

    labels = np.array(["b", "a", "c", "a"])
    codec = TargetCodec.from_targets("classifier", labels)
    assert codec.to_info() == {"classes": ["a", "b", "c"]} and codec.n_outputs == 3
    assert codec.encode(labels).tolist() == [1, 0, 2, 0]
    logits = np.eye(3, dtype=np.float32)[codec.encode(labels)] * 10
    predicted, probabilities = TargetCodec.from_info("classifier", codec.to_info()).decode(logits)
    assert predicted.tolist() == labels.tolist() and probabilities.shape == (4, 3)
    with pytest.raises(ValueError, match=r"\['z'\] are not among the model's classes"):
        codec.encode(["a", "z"])


def test_binned_codec_keeps_its_bins_and_the_range_test_uses_them(sim, data):
    ages = sim.metadata["age"].to_numpy()
    codec = TargetCodec.from_targets("regressor", ages, binned=True)
    info = codec.to_info()
    assert codec.n_outputs == len(info["target_bins"]) >= 2
    np.testing.assert_array_equal(TargetCodec.from_info("regressor", info).bins, codec.bins)
    result = lr_range_test(data, ages, "regressor", ModelConfig(**TINY),
                           TrainConfig(**RUN, regression_loss="binned"), steps=10, log=quiet)
    assert np.isfinite(result.curve["loss"]).all()


# --- the core reads a feature table -----------------------------------------------------


class FeatureTable:
    """What SampleSet.from_biom reads of a biom.Table."""

    def __init__(self, counts, feature_ids, sample_ids):
        self.matrix_data = scipy.sparse.csr_matrix(counts)     # features x samples
        self._ids = {"observation": np.array(feature_ids), "sample": np.array(sample_ids)}

    def ids(self, axis="sample"):
        return self._ids[axis]


SEQUENCES = {"f1": "ACGTACGT", "f2": "TTTTGGGG", "f3": "GGGGCCCC"}


def test_from_biom_leaves_out_features_without_counts():
    counts = np.array([[5, 0, 1], [0, 0, 0], [2, 7, 0]])      # f2 has no counts
    data = SampleSet.from_biom(FeatureTable(counts, ["f1", "f2", "f3"], ["s1", "s2", "s3"]),
                               SEQUENCES, 150, 64)
    same = SampleSet(counts[[0, 2]].T, ["s1", "s2", "s3"], ["f1", "f3"], SEQUENCES, 150, 64)
    assert data.feature_ids == ["f1", "f3"] and data.sample_ids == ["s1", "s2", "s3"]
    assert data.sequences == ["ACGTACGT", "GGGGCCCC"]
    for a, b in zip(data.asv_ids + data.log_abundance, same.asv_ids + same.log_abundance):
        np.testing.assert_array_equal(a, b)
    assert (data.counts != same.counts).nnz == 0


def test_from_biom_refuses_empty_samples_and_missing_sequences():
    table = FeatureTable(np.array([[5, 0], [1, 0]]), ["f1", "f2"], ["s1", "s2"])
    with pytest.raises(ValueError, match="1 sample.s. have no counts .e.g. 's2'"):
        SampleSet.from_biom(table, SEQUENCES, 150, 64)
    table = FeatureTable(np.array([[5, 1], [1, 2]]), ["f1", "f9"], ["s1", "s2"])
    with pytest.raises(ValueError, match="1 feature.s. with counts have no sequence .e.g. 'f9'"):
        SampleSet.from_biom(table, SEQUENCES, 150, 64)
