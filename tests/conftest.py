"""Shared fixtures: one small simulated data set, its QIIME 2 artifacts, and one
tiny pretrained encoder that several test files reuse.

Everything here is session-scoped and shared: treat the fixtures as read-only
(copy a DataFrame before changing it) so tests stay independent.
"""
import os
import shutil
import subprocess
import sys

import pytest

# Tiny models gain nothing from several threads, and on a shared 2-core machine
# oversubscribed OpenMP threads make them several times slower. Set before any
# test module imports torch; `qiime` subprocesses inherit it. Override by
# exporting OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")

# The simulated data set behind `sim` / `artifacts`: big enough for a
# validation split and several batches, small enough to train on in a second.
SIM_PARAMS = dict(n_samples=32, n_asvs=40, seq_length=100, depth=500, random_seed=0)

# The smallest sensible model; spread it into pretrain calls: `**TINY_MODEL`.
TINY_MODEL = dict(embedding_dim=16, attention_heads=2, attention_layers=1)
# One pass an epoch (min_epoch_steps 0): the fit default's 20 steps would make
# every tiny fit several times slower, and these tests are not about it.
TINY_TRAINING = dict(epochs=3, batch_size=8, validation_fraction=0.25, device="cpu",
                     random_state=0, min_epoch_steps=0)


def pytest_configure(config):
    if "torch" in sys.modules:      # imported before this file by some plugin
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def sim():
    """A small `q2_aam.core.simulate.SimulatedData` (32 samples, 40 ASVs of 100 nt)."""
    from q2_aam.core.simulate import simulate
    return simulate(**SIM_PARAMS)


@pytest.fixture(scope="session")
def artifacts(sim):
    """`sim` as QIIME 2 inputs: (FeatureTable[Frequency], FeatureData[Sequence],
    DistanceMatrix artifacts, qiime2.Metadata)."""
    from q2_aam._examples import to_artifacts
    return to_artifacts(sim)


@pytest.fixture(scope="session")
def tiny_encoder(artifacts):
    """An AAMModel[Encoder] artifact pretrained for a few epochs on `artifacts`."""
    from qiime2.plugins.aam.methods import pretrain
    table, sequences, distance_matrix, _ = artifacts
    result = pretrain(table=table, sequences=sequences, distance_matrix=distance_matrix,
                      **TINY_MODEL, **TINY_TRAINING)
    return result.encoder


def run_qiime(*args, timeout=300, env=None):
    """Run the venv's `qiime` command; returns the CompletedProcess (never raises
    on a non-zero exit, so tests can assert on failures)."""
    return subprocess.run([qiime_executable(), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def qiime_executable():
    """The venv's `qiime` (own plugin cache) when set up, else the one on PATH
    (a conda install)."""
    venv_qiime = os.path.join(VENV_BIN, "qiime")
    return venv_qiime if os.path.exists(venv_qiime) else shutil.which("qiime")


@pytest.fixture(scope="session")
def qiime():
    """`qiime(*args)` -> CompletedProcess of the `qiime` command."""
    if qiime_executable() is None:
        pytest.fail("No `qiime` command: run `make setup` (or install q2cli).")
    return run_qiime


@pytest.fixture(scope="session")
def python_exe():
    """The interpreter running the tests (the venv's), for subprocess checks."""
    return sys.executable


@pytest.fixture(scope="session")
def aam():
    """`qiime2.plugins.aam`, loaded with the venv's own plugin cache."""
    os.environ.setdefault("XDG_CONFIG_HOME", os.path.join(REPO, ".venv", "qiime-config"))
    from qiime2.plugins import aam
    return aam


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """One headless Chromium (tests/browser.py) shared by the browser tests."""
    sys.path.insert(0, os.path.dirname(__file__))
    from browser import CHROMIUM, Browser, chromium_available
    if not chromium_available():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make setup`.")
    with Browser(tmp_path_factory.mktemp("chromium")) as shared:
        yield shared
