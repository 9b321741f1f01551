"""The core's command line (q2_aam.core.cli): files in, a model directory out,
under torchrun or in one process; its models import into QIIME 2 and answer
as the QIIME 2 actions' do."""
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio
import torch

from conftest import TINY_MODEL
from q2_aam import _parameters
from q2_aam.core import cli
from q2_aam.core.bundle import ModelBundle

# SGD: a run on two processes differs from one process's by round-off only,
# which SGD does not amplify (tests/test_distributed.py says why Adam can).
SETTINGS = dict(**TINY_MODEL, epochs=2, batch_size=8, validation_fraction=0.25, device="cpu",
                optimizer="sgd", learning_rate=0.05)


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory):
    """`sim` on disk: table.biom (HDF5), sequences.fasta, unifrac.tsv, tree.nwk,
    metadata.tsv (with its '#q2:types' row)."""
    import biom
    from biom.util import biom_open
    directory = tmp_path_factory.mktemp("cli-inputs")
    sim.write(str(directory))
    table = biom.Table(sim.counts.T.to_numpy(), observation_ids=list(sim.counts.columns),
                       sample_ids=list(sim.counts.index))
    with biom_open(str(directory / "table.biom"), "w") as fh:
        table.to_hdf5(fh, "q2-aam tests")
    return directory


def options(settings):
    return [part for key, value in settings.items()
            for part in (f"--{key.replace('_', '-')}", str(value))]


def inputs(files, *names):
    flags = {"table": "table.biom", "sequences": "sequences.fasta",
             "distances": "unifrac.tsv", "tree": "tree.nwk", "metadata": "metadata.tsv"}
    return [part for name in names for part in (f"--{name}", str(files / flags[name]))]


def predicted_distances(aam, artifact, artifacts):
    table, sequences, _, _ = artifacts
    result = aam.methods.predict_distances(encoder=artifact, table=table, sequences=sequences,
                                           device="cpu")
    return result.distance_matrix.view(skbio.DistanceMatrix).data


def test_torchrun_pretraining_imports_as_an_artifact_and_predicts(files, tmp_path, aam,
                                                                  artifacts, python_exe):
    out = tmp_path / "encoder"
    command = [python_exe, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "q2_aam.core.cli", "pretrain",
               *inputs(files, "table", "sequences", "distances"), "--output", str(out),
               *options(SETTINGS), "--random-seed", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training on 2 processes (cpu each)" in result.stderr
    assert result.stderr.count("Best epoch") == 1            # rank 0 alone logs
    assert sorted(os.listdir(tmp_path)) == ["encoder"]       # no partial directory left
    artifact = qiime2.Artifact.import_data("AAMModel[Encoder]", str(out))
    # The same run as the QIIME 2 action on one device, up to round-off.
    table, sequences, distance_matrix, _ = artifacts
    one, = aam.methods.pretrain(table=table, sequences=sequences,
                                distance_matrix=distance_matrix, random_state=0, **SETTINGS)
    assert artifact.view(ModelBundle).info["training"] == {
        **one.view(ModelBundle).info["training"], "tensorboard_dir": ""}
    two_processes = predicted_distances(aam, artifact, artifacts)
    assert np.isfinite(two_processes).all() and two_processes.max() > 0
    np.testing.assert_allclose(two_processes, predicted_distances(aam, one, artifacts),
                               atol=1e-3)


def test_a_fit_is_the_qiime_actions_fit(files, tmp_path, aam, artifacts, tiny_encoder):
    # One process, the tree's UniFrac, a pretrained encoder, the defaults of
    # both sides: the same model, to the bit.
    encoder_dir = tmp_path / "encoder"
    tiny_encoder.view(ModelBundle).save(str(encoder_dir))
    out = tmp_path / "regressor"
    settings = dict(epochs=2, batch_size=8, device="cpu")
    cli.main(["fit-regressor", *inputs(files, "table", "sequences", "tree", "metadata"),
              "--column", "age", "--encoder", str(encoder_dir), "--output", str(out),
              *options(settings), "--random-seed", "0"])
    artifact = qiime2.Artifact.import_data("AAMModel[Regressor]", str(out))
    table, sequences, _, metadata = artifacts
    tree = qiime2.Artifact.import_data("Phylogeny[Rooted]", skbio.TreeNode.read(
        str(files / "tree.nwk")))
    expected, = aam.methods.fit_regressor(
        table=table, sequences=sequences, metadata=metadata.get_column("age"),
        pretrained_encoder=tiny_encoder, phylogeny=tree, random_state=0, **settings)
    answers = [aam.methods.predict(model=model, table=table, sequences=sequences,
                                   device="cpu").predictions.view(pd.Series)
               for model in (artifact, expected)]
    np.testing.assert_array_equal(answers[0], answers[1])


def test_covariates_condition_a_fit_as_in_the_qiime_action(files, tmp_path, aam, artifacts):
    # A covariates file with a numeric column read from its '#q2:types' row and a
    # categorical one: the same model as the action's with the same Metadata.
    table, sequences, _, metadata = artifacts
    frame = metadata.to_dataframe()[["site"]].assign(depth=lambda f: np.arange(len(f)) % 3)
    path = tmp_path / "covariates.tsv"
    with open(path, "w") as fh:
        fh.write("sample-id\tsite\tdepth\n#q2:types\tcategorical\tnumeric\n")
        frame.to_csv(fh, sep="\t", header=False)
    out = tmp_path / "regressor"
    settings = dict(epochs=2, batch_size=8, device="cpu", min_epoch_steps=0)
    cli.main(["fit-regressor", *inputs(files, "table", "sequences", "metadata"),
              "--column", "age", "--covariates", str(path), "--output", str(out),
              *options(settings), "--random-seed", "0"])
    artifact = qiime2.Artifact.import_data("AAMModel[Regressor]", str(out))
    covariates = qiime2.Metadata(frame)
    read = cli.read_covariates(str(path))
    assert read["depth"].dtype.kind == "i" and read["site"].dtype == object
    expected, = aam.methods.fit_regressor(
        table=table, sequences=sequences, metadata=metadata.get_column("age"),
        covariates=covariates, random_state=0, **settings)
    assert artifact.view(ModelBundle).info["covariates"] == \
        expected.view(ModelBundle).info["covariates"]
    answers = [aam.methods.predict(model=model, table=table, sequences=sequences,
                                   covariates=covariates,
                                   device="cpu").predictions.view(pd.Series)
               for model in (artifact, expected)]
    np.testing.assert_array_equal(answers[0], answers[1])
    refusal = run_refused(["fit-regressor", *inputs(files, "table", "sequences", "metadata"),
                           "--column", "age", "--covariates", str(files / "metadata.tsv"),
                           "--output", str(tmp_path / "refused"), *options(settings)])
    assert "the column 'age' that the model is to predict" in refusal


def test_faith_pd_from_a_file_is_the_actions_input(files, tmp_path, aam, artifacts):
    table, sequences, distance_matrix, _ = artifacts
    ids = table.view(pd.DataFrame).index
    faith = pd.Series(np.linspace(2.0, 9.0, len(ids)), index=pd.Index(ids, name="sample-id"),
                      name="faith_pd")
    path = tmp_path / "faith.tsv"
    faith.to_csv(path, sep="\t")
    out = tmp_path / "encoder"
    cli.main(["pretrain", *inputs(files, "table", "sequences", "distances"), "--faith-pd",
              str(path), "--output", str(out), *options(SETTINGS), "--random-seed", "0"])
    from_file = ModelBundle.load(str(out))
    expected, = aam.methods.pretrain(
        table=table, sequences=sequences, distance_matrix=distance_matrix, random_state=0,
        faith_pd=qiime2.Artifact.import_data("SampleData[AlphaDiversity]", faith), **SETTINGS)
    expected = expected.view(ModelBundle)
    assert from_file.model_config.faith_pd and expected.model_config.faith_pd
    assert from_file.info["faith_pd_scaling"] == expected.info["faith_pd_scaling"]
    for name, value in expected.state_dict.items():
        assert torch.equal(from_file.state_dict[name], value), name
    path.write_text("sample-id\tfaith_pd\ns1\tmany\n")
    assert "values that are not numbers: many" in run_refused(
        ["pretrain", *inputs(files, "table", "sequences", "distances"), "--faith-pd",
         str(path), "--output", str(tmp_path / "refused")])


def test_a_classifier_from_the_command_line_imports(files, tmp_path, capsys):
    out = tmp_path / "classifier"
    cli.main(["fit-classifier", *inputs(files, "table", "sequences", "metadata"),
              "--column", "site", "--output", str(out), *options(SETTINGS),
              "--class-weights", "balanced"])
    err = capsys.readouterr().err
    assert "Fitting a classifier of 'site' on 32 samples (one process)" in err
    artifact = qiime2.Artifact.import_data("AAMModel[Classifier]", str(out))
    bundle = artifact.view(ModelBundle)
    # No --random-seed: one is drawn, reported and recorded, as the actions do.
    seed, = re.findall(r"No --random-seed given: using seed (\d+) \(pass --random-seed", err)
    assert bundle.info["training"]["random_seed"] == int(seed)
    assert bundle.info["classes"] == sorted(set(pd.read_csv(
        files / "metadata.tsv", sep="\t", skiprows=[1])["site"]))
    assert bundle.info["training"]["unifrac_penalty"] == 0.0      # no distances given


@pytest.mark.parametrize("command, action", [("pretrain", "pretrain"),
                                             ("fit-regressor", "fit_regressor"),
                                             ("fit-classifier", "fit_classifier")])
def test_options_and_defaults_are_the_qiime_actions(command, action):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    offered = {a.dest: a.default for a in sub._actions if a.dest != "help"}
    files = {"table", "sequences", "distances", "tree", "output", "metadata", "column",
             "encoder", "covariates", "faith_pd"}
    # threads and processes: torchrun's; covariates: a file (in `files`)
    not_in_the_cli = {"n_jobs", "n_devices", "covariates"}
    table = {(_parameters.PARAMETERS[name].field or name): value
             for name, value in _parameters.defaults(action).items()
             if name not in not_in_the_cli}
    cli_only = {"tensorboard_dir"}                 # an environment variable in QIIME 2
    assert set(offered) - files - cli_only == set(table)
    preset = cli.preset_of(command)
    for name, value in table.items():
        if name in cli.ACTION_DEFAULTS:
            assert offered[name] == value, name
        elif name == "random_seed":
            assert offered[name] is None          # the preset's 0; QIIME 2 draws one
        else:
            assert offered[name] is None, name    # then the preset's, as the action's
            assert value == getattr(_config(name).preset(preset), name), name


def _config(name):
    from q2_aam.core.config import ModelConfig, TrainConfig
    return ModelConfig if name in ModelConfig.__dataclass_fields__ else TrainConfig


def run_refused(argv):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    return str(stop.value.code)


def test_an_existing_output_is_refused_before_training(files, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("keep me")
    message = run_refused(["pretrain", *inputs(files, "table", "sequences", "distances"),
                           "--output", str(taken)])
    assert "exists; give a new path or an empty directory" in message
    assert "Training on" not in capsys.readouterr().err
    assert (taken / "something").read_text() == "keep me"


def test_a_failed_save_leaves_no_output(files, tmp_path, monkeypatch):
    def broken(self, directory):
        open(os.path.join(directory, "config.json"), "w").close()
        raise OSError("disk full")
    monkeypatch.setattr(ModelBundle, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        cli.main(["pretrain", *inputs(files, "table", "sequences", "distances"),
                  "--output", str(tmp_path / "model"), *options(SETTINGS)])
    assert os.listdir(tmp_path) == []


def test_bad_inputs_are_explained(files, tmp_path):
    base = ["--output", str(tmp_path / "model"), *options(SETTINGS)]
    short = tmp_path / "short.tsv"
    pd.read_csv(files / "unifrac.tsv", sep="\t", index_col=0).iloc[:30, :30].to_csv(
        short, sep="\t")
    assert "--distances lacks 2 sample(s) of the table" in run_refused(
        ["pretrain", *inputs(files, "table", "sequences"), "--distances", str(short), *base])
    assert "Column 'site' is not numeric" in run_refused(
        ["fit-regressor", *inputs(files, "table", "sequences", "metadata"), "--column",
         "site", *base])
    assert "--metadata has no column 'height'" in run_refused(
        ["fit-regressor", *inputs(files, "table", "sequences", "metadata"), "--column",
         "height", *base])
    assert "is not FASTA" in run_refused(
        ["pretrain", "--sequences", str(files / "unifrac.tsv"),
         *inputs(files, "table", "distances"), *base])
    assert "nothing.biom: no such file" in run_refused(
        ["pretrain", "--table", str(files / "nothing.biom"),
         *inputs(files, "sequences", "distances"), *base])


def test_missing_readers_are_named_and_the_core_imports_without_them(files, tmp_path,
                                                                     python_exe):
    code = ("import sys; sys.modules['biom'] = sys.modules['skbio'] = None; "
            "import q2_aam.core.cli as cli; cli.main(sys.argv[1:])")
    result = subprocess.run([python_exe, "-c", code, "pretrain",
                             *inputs(files, "table", "sequences", "distances"),
                             "--output", str(tmp_path / "model")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Reading a BIOM table needs the biom-format package" in result.stderr
    with pytest.raises(ValueError, match="needs scikit-bio"):
        _without("skbio", lambda: cli.read_tree(str(files / "tree.nwk")))


def _without(module, call):
    saved = sys.modules.get(module)
    sys.modules[module] = None
    try:
        return call()
    finally:
        if saved is None:
            del sys.modules[module]
        else:
            sys.modules[module] = saved


def test_metadata_gaps_and_absent_samples_follow_missing_samples(files, tmp_path, capsys):
    metadata = pd.read_csv(files / "metadata.tsv", sep="\t", dtype=str)
    metadata.loc[3, "age"] = ""                  # row 0 is '#q2:types'
    path = tmp_path / "metadata.tsv"
    metadata.iloc[:-2].to_csv(path, sep="\t", index=False)       # two samples absent
    fit = ["fit-regressor", *inputs(files, "table", "sequences"), "--metadata", str(path),
           "--column", "age", "--output", str(tmp_path / "model"), *options(SETTINGS)]
    assert "2 sample(s) of the table are missing from the metadata" in run_refused(fit)
    cli.main([*fit, "--missing-samples", "ignore"])
    err = capsys.readouterr().err
    assert "Dropping 1 sample(s) with no value in 'age'" in err
    assert "Fitting a regressor of 'age' on 29 samples" in err
    assert ModelBundle.load(str(tmp_path / "model")).info["n_samples"] == 29
