"""Covariates (q2_aam.core.covariates): sample metadata that conditions a fit,
through the Artifact API on simulated data where they matter, and the core
pieces that carry them (collate, shard_batch, the model's info on disk).

The cohort: conftest's simulator (150 samples, seed 1) with two covariates the
microbiome knows nothing about, a categorical `study` and a numeric `dose`, and
a target `score` = age (which the communities reflect) + an offset per study +
a dose effect. Only a model given the covariates can predict the score well.
"""
import json
from types import SimpleNamespace

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio
import torch

from q2_aam.core.bundle import ModelBundle
from q2_aam.core.covariates import CovariateCodec

COHORT = dict(n_samples=150, n_asvs=120, seq_length=100, depth=1000, random_seed=1)
N_TEST = 30
STUDY_OFFSETS = {"study-a": -20.0, "study-b": 0.0, "study-c": 20.0}
DOSE_EFFECT = 8.0          # score units per standard deviation of dose
# min_epoch_steps 0: one pass an epoch, the speed these tests were sized for.
GOOD_MODEL = dict(embedding_dim=32, attention_heads=2, attention_layers=1, epochs=30,
                  min_epoch_steps=0, batch_size=16, learning_rate=2e-3, validation_fraction=0.2,
                  device="cpu",
                  random_state=0, lookup_neighbours=0)
TINY = dict(embedding_dim=16, attention_heads=2, attention_layers=1, epochs=2,
            min_epoch_steps=0, batch_size=8,
            validation_fraction=0.25, device="cpu", random_state=0)


def metadata(frame):
    return qiime2.Metadata(frame.rename_axis("sample-id"))


def table_artifact(table):
    return qiime2.Artifact.import_data("FeatureTable[Frequency]", table)


def series(artifact):
    return artifact.view(pd.Series)


@pytest.fixture(scope="module")
def cohort():
    from q2_aam._examples import to_artifacts
    from q2_aam.core.simulate import simulate
    sim = simulate(**COHORT)
    table, sequences, _, _ = to_artifacts(sim)
    rng = np.random.default_rng(7)
    ids = list(sim.metadata.index)
    study = np.array(list(STUDY_OFFSETS))[rng.permutation(np.arange(len(ids)) % 3)]
    dose = np.round(rng.uniform(0, 10, len(ids)), 2)
    covariates = pd.DataFrame({"study": study, "dose": dose}, index=pd.Index(ids))
    score = (sim.metadata["age"] + covariates["study"].map(STUDY_OFFSETS)
             + DOSE_EFFECT * (dose - dose.mean()) / dose.std())
    full = table.view(biom.Table)
    test_ids = sorted(rng.choice(ids, N_TEST, replace=False))
    train_ids = [s for s in ids if s not in test_ids]
    return SimpleNamespace(
        train=table_artifact(full.filter(train_ids, inplace=False)),
        test=table_artifact(full.filter(test_ids, inplace=False)),
        test_biom=full.filter(test_ids, inplace=False), sequences=sequences,
        target=metadata(pd.DataFrame({"score": score})).get_column("score"),
        covariates=covariates, score=score, train_ids=train_ids, test_ids=test_ids)


@pytest.fixture(scope="module")
def covariate_model(aam, cohort):
    model, = aam.methods.fit_regressor(table=cohort.train, sequences=cohort.sequences,
                                       metadata=cohort.target,
                                       covariates=metadata(cohort.covariates), **GOOD_MODEL)
    return model


@pytest.fixture(scope="module")
def small(artifacts):
    """conftest's 32 samples with a categorical and a numeric covariate."""
    table, sequences, _, frame = artifacts
    ids = list(table.view(biom.Table).ids())
    rng = np.random.default_rng(3)
    covariates = pd.DataFrame({"batch": np.where(np.arange(len(ids)) % 2, "run-1", "run-2"),
                               "depth": rng.uniform(1, 5, len(ids))}, index=pd.Index(ids))
    return SimpleNamespace(table=table, sequences=sequences, covariates=covariates,
                           age=frame.get_column("age"), site=frame.get_column("site"))


def predict(aam, model, cohort, frame=None, **extra):
    kwargs = {} if frame is None else {"covariates": metadata(frame)}
    predictions, = aam.methods.predict(model=model, table=cohort.test,
                                       sequences=cohort.sequences, **kwargs, **extra)
    return series(predictions)


# --- learning where a covariate matters -------------------------------------------------


def test_covariates_make_the_regressor_clearly_better_on_held_out_samples(
        aam, cohort, covariate_model):
    without, = aam.methods.fit_regressor(table=cohort.train, sequences=cohort.sequences,
                                         metadata=cohort.target, **GOOD_MODEL)
    truth = cohort.score[cohort.test_ids]
    errors = {}
    for name, model, frame in (("with", covariate_model, cohort.covariates),
                               ("without", without, None)):
        predicted = predict(aam, model, cohort, frame)
        assert sorted(predicted.index) == cohort.test_ids
        errors[name] = float(np.abs(predicted - truth[predicted.index]).mean())
    assert errors["with"] < 0.6 * errors["without"], errors


def test_the_model_records_its_covariates(cohort, covariate_model):
    fitted = covariate_model.view(ModelBundle)
    columns = {c["name"]: c for c in fitted.info["covariates"]["columns"]}
    assert columns["study"] == {"name": "study", "type": "categorical",
                                "categories": sorted(STUDY_OFFSETS)}
    # Scaled with the training split's statistics (one member: its training samples).
    trained = cohort.covariates.loc[fitted.info["train_samples"], "dose"]
    assert len(trained) < len(cohort.train_ids)          # validation samples are left out
    assert columns["dose"]["type"] == "numeric"
    assert columns["dose"]["mean"] == pytest.approx(trained.mean())
    assert columns["dose"]["std"] == pytest.approx(trained.std(ddof=0))
    cfg = fitted.model_config
    assert (cfg.covariate_categories, cfg.covariate_numeric) == (3 + 1, 1)
    assert fitted.info["training"]["covariate_unknown_rate"] == 0.1


def test_training_learns_the_unknown_category(covariate_model):
    """Each column's unknown row trained (it starts at zero) and differs from
    every category's."""
    fitted = covariate_model.view(ModelBundle)
    table = fitted.state_dict["covariates.categories.weight"]
    unknown = CovariateCodec.from_info(fitted.info).unknown_rows()[0]
    assert table[unknown].abs().max() > 1e-3
    for row in range(unknown + 1, unknown + 1 + len(STUDY_OFFSETS)):
        assert not torch.allclose(table[row], table[unknown])


# --- unseen categories ------------------------------------------------------------------


def test_unseen_categories_are_read_as_unknown_and_reported(aam, cohort, covariate_model,
                                                            capsys):
    from q2_aam.core.inference import predict as core_predict
    from q2_aam.core.inputs import build_sample_set
    frame = cohort.covariates.loc[cohort.test_ids].copy()
    changed = cohort.test_ids[:7]
    frame.loc[changed[:4], "study"] = "study-new"
    frame.loc[changed[4:], "study"] = "study-x"
    capsys.readouterr()
    predicted = predict(aam, covariate_model, cohort, frame)
    err = capsys.readouterr().err
    assert "never seen in training" in err and "'study': 7 sample(s)" in err
    assert "'study-new'" in err and "'study-x'" in err

    # The same as the model's answer with their category set to the unknown row.
    fitted = covariate_model.view(ModelBundle)
    codec = CovariateCodec.from_info(fitted.info)
    data = build_sample_set(cohort.test_biom, cohort.sequences.view(pd.Series),
                            fitted.model_config.max_bp, fitted.model_config.asv_limit)
    known = cohort.covariates.loc[data.sample_ids]
    values, unseen = codec.encode(known)
    assert unseen == {}
    rows = [data.sample_ids.index(s) for s in changed]
    values.codes[rows, 0] = codec.unknown_rows()[0]
    as_unknown, _ = core_predict(fitted, data.replace(covariates=values), device="cpu")
    np.testing.assert_allclose(predicted[data.sample_ids].to_numpy(), as_unknown, rtol=1e-5,
                               atol=1e-4)
    # ... and not their known study's answer: the covariate matters.
    with_known = predict(aam, covariate_model, cohort, cohort.covariates)
    assert (predicted[changed] - with_known[changed]).abs().max() > 1.0


# --- refusals ---------------------------------------------------------------------------


def test_a_missing_covariate_value_is_an_error_naming_samples_and_column(
        aam, cohort, covariate_model):
    frame = cohort.covariates.loc[cohort.test_ids].copy()
    frame.loc[cohort.test_ids[:2], "study"] = np.nan
    with pytest.raises(ValueError, match="'study' has no value for 2 sample") as caught:
        predict(aam, covariate_model, cohort, frame)
    assert all(s in str(caught.value) for s in cohort.test_ids[:2])
    frame = cohort.covariates.loc[cohort.test_ids].copy()
    frame.loc[cohort.test_ids[3], "dose"] = np.nan
    with pytest.raises(ValueError, match=f"'dose' has no value for 1 sample.*"
                                         f"{cohort.test_ids[3]}"):
        predict(aam, covariate_model, cohort, frame)


def test_a_missing_value_is_refused_when_fitting_too(aam, small):
    frame = small.covariates.copy()
    frame.iloc[5, frame.columns.get_loc("batch")] = np.nan
    with pytest.raises(ValueError, match=f"'batch' has no value for 1 sample.*"
                                         f"{frame.index[5]}"):
        aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                  metadata=small.age, covariates=metadata(frame), **TINY)


def test_covariates_are_required_at_predict_when_the_model_has_them(
        aam, cohort, covariate_model):
    with pytest.raises(ValueError, match="fitted with covariates.*study.*dose"):
        predict(aam, covariate_model, cohort)
    with pytest.raises(ValueError, match="fitted with covariates"):
        aam.methods.embed(model=covariate_model, table=cohort.test, sequences=cohort.sequences)
    with pytest.raises(ValueError, match="lack the column\\(s\\) dose"):
        predict(aam, covariate_model, cohort, cohort.covariates[["study"]])
    absent = cohort.covariates.drop(index=cohort.test_ids[:3])
    with pytest.raises(ValueError, match="3 sample\\(s\\) are missing from the covariates"):
        predict(aam, covariate_model, cohort, absent)


def test_a_column_of_another_type_than_in_training_is_refused(aam, cohort, covariate_model):
    frame = cohort.covariates.loc[cohort.test_ids].copy()
    frame["dose"] = frame["dose"].map(lambda v: "high" if v > 5 else "low")
    with pytest.raises(ValueError, match="'dose' is categorical here but was numeric"):
        predict(aam, covariate_model, cohort, frame)


def test_the_column_to_predict_is_refused_as_a_covariate(aam, small):
    frame = small.covariates.assign(age=small.age.to_series())
    with pytest.raises(ValueError, match="include the column 'age' that the model is to "
                                         "predict"):
        aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                  metadata=small.age, covariates=metadata(frame), **TINY)


def test_samples_absent_from_the_covariates_follow_missing_samples(aam, small):
    frame = small.covariates.iloc[3:]
    with pytest.raises(ValueError, match="3 sample\\(s\\) are missing from the covariates"):
        aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                  metadata=small.age, covariates=metadata(frame), **TINY)
    model, = aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                       metadata=small.age, covariates=metadata(frame),
                                       missing_samples="ignore", **TINY)
    info = model.view(ModelBundle).info
    assert info["n_samples"] == len(frame) and set(info["train_samples"]) <= set(frame.index)


# --- the other actions and paths ----------------------------------------------------------


def test_classifier_ensemble_pipeline_and_embed_carry_covariates(aam, small):
    covariates = metadata(small.covariates)
    model, = aam.methods.fit_classifier(table=small.table, sequences=small.sequences,
                                        metadata=small.site, covariates=covariates,
                                        ensemble_size=2, **TINY)
    fitted = model.view(ModelBundle)
    assert {f"members.{k}.covariates.categories.weight" for k in (0, 1)} <= set(
        fitted.state_dict)
    probabilities, = aam.methods.predict_probabilities(
        model=model, table=small.table, sequences=small.sequences, covariates=covariates)
    assert np.allclose(probabilities.view(pd.DataFrame).sum(1), 1.0, atol=1e-5)
    # Embeddings include the covariates: another batch moves every sample.
    swapped = small.covariates.assign(batch=small.covariates["batch"].map(
        {"run-1": "run-2", "run-2": "run-1"}))
    a, b = (aam.methods.embed(model=model, table=small.table, sequences=small.sequences,
                              covariates=metadata(frame)).embeddings
            .view(skbio.OrdinationResults).samples.to_numpy()
            for frame in (small.covariates, swapped))
    assert not np.allclose(np.abs(a), np.abs(b))

    result = aam.pipelines.regress_samples(table=small.table, sequences=small.sequences,
                                           metadata=small.age, covariates=covariates,
                                           test_size=0.25, lookup_neighbours=0, **TINY)
    assert result.model.view(ModelBundle).info["covariates"]["columns"][0]["name"] == "batch"
    assert len(series(result.predictions)) == 8


def test_a_model_without_covariates_says_it_does_not_use_them(aam, small, capsys):
    model, = aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                       metadata=small.age, **TINY)
    capsys.readouterr()
    plain, = aam.methods.predict(model=model, table=small.table, sequences=small.sequences)
    given, = aam.methods.predict(model=model, table=small.table, sequences=small.sequences,
                                 covariates=metadata(small.covariates))
    assert "fitted without covariates" in capsys.readouterr().err
    pd.testing.assert_series_equal(series(plain), series(given))


# --- the core pieces -----------------------------------------------------------------------


def covariate_set(n=12, seed=3):
    from q2_aam.core.data import SampleSet
    from q2_aam.core.simulate import simulate
    sim = simulate(n_samples=n, n_asvs=20, seq_length=60, depth=300, random_seed=seed)
    data = SampleSet(sim.counts.to_numpy(), list(sim.counts.index), list(sim.counts.columns),
                     sim.sequences.to_dict(), 60, 64)
    frame = pd.DataFrame({"site": sim.metadata["site"],
                          "dose": np.linspace(0, 1, n)}, index=sim.metadata.index)
    return data, sim, frame


def test_collate_reads_categories_as_unknown_at_the_rate_and_seed_given():
    data, _, frame = covariate_set(200)
    codec = CovariateCodec.from_frame(frame)
    values, _ = codec.encode(frame)
    data = data.replace(covariates=values)
    rows = np.arange(200)
    plain = data.collate(rows)
    assert torch.equal(plain.covariate_codes, torch.from_numpy(values.codes))
    a = data.collate(rows, rng=np.random.default_rng(1), unknown_rate=0.3)
    b = data.collate(rows, rng=np.random.default_rng(1), unknown_rate=0.3)
    assert torch.equal(a.covariate_codes, b.covariate_codes)
    hidden = (a.covariate_codes == int(codec.unknown_rows()[0])).float().mean()
    assert 0.2 < hidden < 0.4
    torch.testing.assert_close(a.covariate_values, plain.covariate_values)
    # Without covariates nothing is drawn: seeded runs stay as they were.
    rng = np.random.default_rng(1)
    covariate_set(200)[0].collate(rows, rng=rng, unknown_rate=0.3)
    assert rng.random() == np.random.default_rng(1).random()


def test_covariates_without_columns_or_with_infinite_values_are_refused():
    frame = pd.DataFrame({"dose": [1.0, np.inf, 2.0]}, index=["a", "b", "c"])
    with pytest.raises(ValueError, match="'dose' has no value for 1 sample\\(s\\): b"):
        CovariateCodec.from_frame(frame)
    with pytest.raises(ValueError, match="no columns"):
        CovariateCodec.from_frame(frame[[]])


def test_shards_carry_their_samples_covariates():
    from q2_aam.core import distributed
    from q2_aam.core.losses import LossFunction
    data, _, frame = covariate_set()
    data.targets = np.linspace(-1, 1, len(data)).astype(np.float32)
    values, _ = CovariateCodec.from_frame(frame).encode(frame)
    batch = data.replace(covariates=values).collate(np.arange(7))
    shards = [distributed.shard_batch(batch, LossFunction("regressor"), r, 2)
              for r in range(2)]
    for shard, rows in zip(shards, (slice(0, 4), slice(4, 7))):
        assert torch.equal(shard.batch.covariate_codes, batch.covariate_codes[rows])
        assert torch.equal(shard.batch.covariate_values, batch.covariate_values[rows])


def test_two_process_fit_with_covariates_matches_one_process():
    from q2_aam.core import distributed
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.supervised import fit, predict as core_predict
    data, sim, frame = covariate_set(24)
    ages = sim.metadata["age"].to_numpy()
    cfg = TrainConfig.preset("fit", epochs=3, batch_size=8, validation_fraction=0.25,
                             device="cpu", random_seed=0)
    model_cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1)
    quiet = lambda message: None       # noqa: E731
    single = fit(data, ages, "regressor", model_cfg, cfg, log=quiet, covariates=frame)
    parallel = distributed.train_distributed(fit, 2, data, ages, "regressor", model_cfg, cfg,
                                             log=quiet, covariates=frame)
    assert parallel.info["covariates"] == single.info["covariates"]
    a, _ = core_predict(single, data, device="cpu", covariates=frame)
    b, _ = core_predict(parallel, data, device="cpu", covariates=frame)
    np.testing.assert_allclose(b, a, atol=1e-3 * single.info["target_scaling"]["std"])


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["columns"][0]["categories"].pop(), "covariate_categories"),
    (lambda c: c["columns"][1].update(std=0), "positive, finite 'std'"),
    (lambda c: c["columns"][1].update(name="site"), "names a column twice"),
])
def test_a_damaged_covariate_record_is_refused_on_loading(tmp_path, edit, message):
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.supervised import fit
    data, sim, frame = covariate_set(16)
    bundle = fit(data, sim.metadata["age"].to_numpy(), "regressor",
                 ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1),
                 TrainConfig.preset("fit", epochs=1, batch_size=8, validation_fraction=0.25,
                                    device="cpu"), log=lambda m: None, covariates=frame)
    bundle.save(tmp_path)
    assert ModelBundle.load(tmp_path).info["covariates"] == bundle.info["covariates"]
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    edit(config["info"]["covariates"])
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        ModelBundle.load(tmp_path)
