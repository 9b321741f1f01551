"""Tests of the supervised actions (fit-regressor, fit-classifier, predict,
predict-probabilities, embed, predict-distances) and the regress-samples /
classify-samples pipelines, through the Artifact API and the CLI.

Two data sets: conftest's small one (`artifacts`, 32 samples) for behaviour that
needs a model but not a good one, and a larger simulation (150 samples) split
into a training and a held-out part, on which a regressor and a classifier are
trained once for the module and judged against the mean / majority baselines.
"""
import os
import subprocess
from types import SimpleNamespace

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio

from q2_aam.core.bundle import ModelBundle

VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv")
QIIME = os.path.join(VENV, "bin", "qiime")

# The held-out data set and a model that learns it in ~10 s on one CPU thread.
BIG_SIM = dict(n_samples=150, n_asvs=120, seq_length=100, depth=1000, random_seed=1)
N_TEST, N_UNSEEN = 30, 10
# min_epoch_steps 0: one pass an epoch, the speed these tests were sized for.
GOOD_MODEL = dict(embedding_dim=32, attention_heads=2, attention_layers=1, epochs=30,
                  min_epoch_steps=0, batch_size=16, learning_rate=2e-3, validation_fraction=0.2,
                  device="cpu",
                  random_state=0)
# A model that only has to run.
TINY = dict(embedding_dim=16, attention_heads=2, attention_layers=1, epochs=2,
            min_epoch_steps=0, batch_size=8,
            validation_fraction=0.25, device="cpu", random_state=0)


def table_artifact(table):
    return qiime2.Artifact.import_data("FeatureTable[Frequency]", table)


def metadata_of(**columns):
    ids = columns.pop("ids")
    return qiime2.Metadata(pd.DataFrame(columns, index=pd.Index(ids, name="sample-id")))


def series(artifact):
    return artifact.view(pd.Series)


def bundle(model):
    return model.view(ModelBundle)


# --- shared data and models -----------------------------------------------------------


@pytest.fixture(scope="module")
def small(artifacts):
    """conftest's 32-sample data as (table, sequences, metadata, biom table, ids)."""
    table, sequences, _, metadata = artifacts
    biom_table = table.view(biom.Table)
    return SimpleNamespace(table=table, sequences=sequences, metadata=metadata,
                           biom=biom_table, ids=list(biom_table.ids()),
                           frame=metadata.to_dataframe())


@pytest.fixture(scope="module")
def big():
    """150 simulated samples: 120 to train on, 30 held out. The training table lacks
    N_UNSEEN features, which the held-out table (all features) still holds."""
    from q2_aam._examples import to_artifacts
    from q2_aam.core.simulate import simulate
    table, sequences, _, metadata = to_artifacts(simulate(**BIG_SIM))
    full = table.view(biom.Table)
    ids = list(full.ids())
    rng = np.random.default_rng(0)
    test_ids = sorted(rng.choice(ids, N_TEST, replace=False))
    train_ids = [s for s in ids if s not in test_ids]
    dropped = list(full.ids(axis="observation"))[:N_UNSEEN]
    train = (full.filter(train_ids, inplace=False)
             .filter(dropped, axis="observation", invert=True, inplace=False)
             .remove_empty(axis="observation", inplace=False))
    test = full.filter(test_ids, inplace=False).remove_empty(axis="observation", inplace=False)
    unseen = set(test.ids(axis="observation")) - set(train.ids(axis="observation"))
    frame = metadata.to_dataframe()
    return SimpleNamespace(full=table, train=table_artifact(train), test=table_artifact(test),
                           test_biom=test, sequences=sequences, metadata=metadata,
                           train_ids=train_ids, test_ids=test_ids, unseen=unseen,
                           age=frame["age"].astype(float), site=frame["site"])


@pytest.fixture(scope="module")
def regressor(aam, big):
    model, = aam.methods.fit_regressor(table=big.train, sequences=big.sequences,
                                       metadata=big.metadata.get_column("age"), **GOOD_MODEL)
    return model


@pytest.fixture(scope="module")
def regressor_predictions(aam, big, regressor):
    predictions, = aam.methods.predict(model=regressor, table=big.test, sequences=big.sequences)
    return predictions


@pytest.fixture(scope="module")
def classifier(aam, big):
    model, = aam.methods.fit_classifier(table=big.train, sequences=big.sequences,
                                        metadata=big.metadata.get_column("site"), **GOOD_MODEL)
    return model


@pytest.fixture(scope="module")
def classifier_outputs(aam, big, classifier):
    predictions, = aam.methods.predict(model=classifier, table=big.test,
                                       sequences=big.sequences)
    probabilities, = aam.methods.predict_probabilities(model=classifier, table=big.test,
                                                       sequences=big.sequences)
    return predictions, probabilities


# --- accuracy on held-out samples -----------------------------------------------------


def test_regressor_beats_the_mean_predictor_on_held_out_samples(big, regressor_predictions):
    predicted = series(regressor_predictions)
    assert sorted(predicted.index) == big.test_ids
    truth = big.age[predicted.index]
    mae = np.abs(predicted - truth).mean()
    mean_predictor_mae = np.abs(truth - big.age[big.train_ids].mean()).mean()
    assert mae < 0.6 * mean_predictor_mae, (mae, mean_predictor_mae)


def test_binned_ensemble_regressor_learns_and_stores_its_members(aam, big):
    """Two members with the 'binned' loss, stored as one model: their pooled
    prediction beats the mean predictor on held-out samples and lies within the
    training targets' range; each member keeps its own history, best epoch and
    validation predictions, and its own weights."""
    model, = aam.methods.fit_regressor(table=big.train, sequences=big.sequences,
                                       metadata=big.metadata.get_column("age"),
                                       regression_loss="binned", ensemble_size=2, **GOOD_MODEL)
    fitted = bundle(model)
    assert fitted.model_config.ensemble_size == 2 and len(fitted.info["best_epoch"]) == 2
    bins = fitted.info["target_bins"]
    train_ages = big.age[big.train_ids]
    assert train_ages.min() <= bins[0] < bins[-1] <= train_ages.max()
    assert set(fitted.history["member"]) == {1, 2} and set(fitted.validation["member"]) == {1, 2}
    assert not fitted.build_model().shared_asv_encoder     # each member learned its own
    heads = [fitted.state_dict[f"members.{k}.target_head.1.weight"] for k in (0, 1)]
    assert heads[0].shape[0] == len(bins) and not np.allclose(heads[0], heads[1])
    predictions, = aam.methods.predict(model=model, table=big.test, sequences=big.sequences)
    predicted = series(predictions)
    truth = big.age[predicted.index]
    mae = np.abs(predicted - truth).mean()
    mean_predictor_mae = np.abs(truth - big.age[big.train_ids].mean()).mean()
    assert mae < 0.6 * mean_predictor_mae, (mae, mean_predictor_mae)
    assert predicted.between(bins[0], bins[-1]).all()


def test_classifier_beats_the_majority_baseline_on_held_out_samples(big, classifier_outputs):
    predicted = series(classifier_outputs[0])
    assert sorted(predicted.index) == big.test_ids
    truth = big.site[predicted.index]
    accuracy = (predicted == truth).mean()
    majority_class = big.site[big.train_ids].value_counts().idxmax()
    majority_accuracy = (truth == majority_class).mean()
    assert accuracy >= majority_accuracy + 0.25, (accuracy, majority_accuracy)


# --- output types and q2-sample-classifier's visualizers ------------------------------


def test_predict_output_types(regressor, classifier, regressor_predictions, classifier_outputs):
    assert str(regressor.type) == "AAMModel[Regressor]"
    assert str(classifier.type) == "AAMModel[Classifier]"
    assert str(regressor_predictions.type) == "SampleData[RegressorPredictions]"
    assert str(classifier_outputs[0].type) == "SampleData[ClassifierPredictions]"
    assert str(classifier_outputs[1].type) == "SampleData[Probabilities]"
    assert np.isfinite(series(regressor_predictions).to_numpy(dtype=float)).all()


def test_probabilities_sum_to_one_over_the_model_classes(big, classifier, classifier_outputs):
    predictions, probabilities = classifier_outputs
    frame = probabilities.view(pd.DataFrame)
    classes = bundle(classifier).info["classes"]
    assert list(frame.columns) == classes
    assert sorted(frame.index) == big.test_ids
    assert ((frame.to_numpy() >= 0) & (frame.to_numpy() <= 1)).all()
    np.testing.assert_allclose(frame.sum(axis=1).to_numpy(), 1.0, atol=1e-5)
    # The predicted label is the most probable class.
    predicted = series(predictions)
    assert (frame.idxmax(axis=1)[predicted.index] == predicted).all()


def test_classes_are_stored_in_the_model(big, classifier):
    info = bundle(classifier).info
    assert info["classes"] == sorted(big.site[big.train_ids].unique())
    assert info["classes"] == ["site-a", "site-b", "site-c"]


def test_outputs_load_in_sample_classifier_visualizers(big, regressor_predictions,
                                                       classifier_outputs):
    from qiime2.plugins.sample_classifier.visualizers import confusion_matrix, scatterplot
    predictions, probabilities = classifier_outputs
    scatter, = scatterplot(predictions=regressor_predictions,
                           truth=big.metadata.get_column("age"))
    confusion, = confusion_matrix(predictions=predictions, probabilities=probabilities,
                                  truth=big.metadata.get_column("site"))
    assert isinstance(scatter, qiime2.Visualization)
    assert isinstance(confusion, qiime2.Visualization)


# --- unseen ASVs ----------------------------------------------------------------------


def test_predict_reads_asvs_never_seen_in_training(aam, big, regressor, regressor_predictions):
    trained_on = set(big.train.view(biom.Table).ids(axis="observation"))
    assert len(big.unseen) == N_UNSEEN and not big.unseen & trained_on
    # Every held-out sample got a prediction, though the table holds unseen features ...
    predicted = series(regressor_predictions)
    assert sorted(predicted.index) == big.test_ids
    assert predicted.notna().all()
    # ... and the model reads them: without them, the samples holding them change
    # (the model's own answers: the look-up answers some samples from their neighbours).
    holders = [s for s in big.test_ids
               if big.test_biom.filter(big.unseen, axis="observation", inplace=False)
               .data(s, axis="sample").sum() > 0]
    assert holders
    model_alone, = aam.methods.strip_lookup(model=regressor)
    without = big.test_biom.filter(big.unseen, axis="observation", invert=True, inplace=False)
    answers = [series(aam.methods.predict(model=model_alone, table=table,
                                          sequences=big.sequences).predictions)
               for table in (big.test, table_artifact(without))]
    changed = ~np.isclose(answers[1][holders], answers[0][holders], atol=1e-6)
    assert changed.all()


# --- reproducibility ------------------------------------------------------------------


def test_same_seed_same_predictions_different_seed_differs(aam, small):
    def predictions(seed):
        model, = aam.methods.fit_regressor(
            table=small.table, sequences=small.sequences,
            metadata=small.metadata.get_column("age"), **{**TINY, "random_state": seed})
        predicted, = aam.methods.predict(model=model, table=small.table,
                                         sequences=small.sequences)
        return series(predicted)
    first, again, other = predictions(0), predictions(0), predictions(1)
    pd.testing.assert_series_equal(first, again)
    assert not np.allclose(first.to_numpy(), other[first.index].to_numpy())


# --- pretrained and frozen encoder ----------------------------------------------------


def test_frozen_encoder_keeps_the_encoder_weights(aam, small, tiny_encoder):
    model, = aam.methods.fit_regressor(
        table=small.table, sequences=small.sequences, metadata=small.metadata.get_column("age"),
        pretrained_encoder=tiny_encoder, freeze_encoder=True, **TINY)
    encoder, fitted = bundle(tiny_encoder), bundle(model)
    assert fitted.info["freeze_encoder"] is True and fitted.info["pretrained"] is True
    assert fitted.model_config.embedding_dim == encoder.model_config.embedding_dim
    asv_keys = [k for k in encoder.state_dict if k.startswith("asv_encoder.")]
    assert asv_keys
    for key in asv_keys:
        assert np.array_equal(fitted.state_dict[key].numpy(), encoder.state_dict[key].numpy()), key
    # The sample level did train.
    sample_keys = [k for k in encoder.state_dict if k.startswith("sample_encoder.")]
    assert any(not np.array_equal(fitted.state_dict[k].numpy(), encoder.state_dict[k].numpy())
               for k in sample_keys)
    predicted, = aam.methods.predict(model=model, table=small.table, sequences=small.sequences)
    assert len(series(predicted)) == len(small.ids)


def test_frozen_ensemble_members_share_the_asv_encoder(aam, small, tiny_encoder):
    model, = aam.methods.fit_regressor(
        table=small.table, sequences=small.sequences, metadata=small.metadata.get_column("age"),
        pretrained_encoder=tiny_encoder, freeze_encoder=True, ensemble_size=2, **TINY)
    assert bundle(model).build_model().shared_asv_encoder
    predicted, = aam.methods.predict(model=model, table=small.table, sequences=small.sequences)
    assert series(predicted).notna().all() and len(series(predicted)) == len(small.ids)


def test_pretrained_fits_set_asv_whitening_and_l1_loss(aam, small, tiny_encoder, regressor):
    """A fit on a pretrained encoder stores its ASV whitening in the artifact; an
    encoder and a from-scratch fit keep the identity. 'auto' loss picks by the same rule."""
    d = bundle(tiny_encoder).model_config.embedding_dim
    for untouched in (bundle(tiny_encoder), bundle(regressor)):
        width = untouched.model_config.embedding_dim
        assert np.array_equal(untouched.state_dict["asv_whitening"].numpy(), np.eye(width))
        assert not untouched.state_dict["asv_center"].numpy().any()
    model, = aam.methods.fit_regressor(
        table=small.table, sequences=small.sequences, metadata=small.metadata.get_column("age"),
        pretrained_encoder=tiny_encoder, freeze_encoder=True, **TINY)
    # regression_loss 'auto': l1 on a pretrained encoder, mse from scratch.
    assert bundle(model).info["training"]["regression_loss"] == "l1"
    assert bundle(regressor).info["training"]["regression_loss"] == "mse"
    whitening = bundle(model).state_dict["asv_whitening"].numpy()
    assert whitening.shape == (d, d) and not np.allclose(whitening, np.eye(d))
    np.testing.assert_allclose(whitening, whitening.T, atol=1e-5)     # symmetric (ZCA)
    # The fit adds its own k-mer embeddings (kmer_size 6 by default) and learns them.
    assert bundle(tiny_encoder).model_config.kmer_size == 0
    assert bundle(model).model_config.kmer_size == 6
    assert bundle(model).state_dict["kmer_bag.table.weight"].abs().sum() > 0
    assert bundle(model).info["training"]["asv_dropout"] == 0.5      # the fits' default


def test_fine_tuned_encoder_changes_the_encoder_weights(aam, small, tiny_encoder):
    model, = aam.methods.fit_classifier(
        table=small.table, sequences=small.sequences,
        metadata=small.metadata.get_column("site"), pretrained_encoder=tiny_encoder,
        freeze_encoder=False, **TINY)
    encoder, fitted = bundle(tiny_encoder), bundle(model)
    assert fitted.info["freeze_encoder"] is False and fitted.info["pretrained"] is True
    asv_keys = [k for k in encoder.state_dict if k.startswith("asv_encoder.")]
    assert any(not np.array_equal(fitted.state_dict[k].numpy(), encoder.state_dict[k].numpy())
               for k in asv_keys)


def test_distance_matrix_keeps_the_unifrac_loss(aam, artifacts, small):
    distance_matrix = artifacts[2]
    with_distances, = aam.methods.fit_regressor(
        table=small.table, sequences=small.sequences, metadata=small.metadata.get_column("age"),
        distance_matrix=distance_matrix, **TINY)
    without, = aam.methods.fit_regressor(
        table=small.table, sequences=small.sequences, metadata=small.metadata.get_column("age"),
        **TINY)
    history = bundle(with_distances).history
    assert {"train/unifrac_loss", "val/unifrac_loss"} <= set(history.columns)
    assert (history["train/unifrac_loss"] > 0).all()
    assert not any("unifrac" in column for column in bundle(without).history.columns)


def test_pretrained_encoders_are_frozen_by_default_and_scratch_fits_ignore_it(
        aam, small, tiny_encoder):
    column = small.metadata.get_column("age")
    on_encoder, = aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                            metadata=column, pretrained_encoder=tiny_encoder,
                                            **TINY)
    from_scratch, = aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                              metadata=column, freeze_encoder=True, **TINY)
    assert bundle(on_encoder).info["freeze_encoder"] is True
    assert bundle(from_scratch).info["freeze_encoder"] is False


# --- regression targets ---------------------------------------------------------------


def test_target_scaling_comes_from_the_training_split(big, regressor, regressor_predictions):
    fitted = bundle(regressor)
    train_samples = fitted.info["train_samples"]
    n = len(big.train_ids)
    assert fitted.info["n_samples"] == n
    assert len(train_samples) == n - round(GOOD_MODEL["validation_fraction"] * n)
    assert set(train_samples) < set(big.train_ids)
    ages = big.age[train_samples].to_numpy()
    scaling = fitted.info["target_scaling"]
    assert scaling["mean"] == pytest.approx(ages.mean(), rel=1e-9)
    assert scaling["std"] == pytest.approx(ages.std(), rel=1e-9)
    # Not the statistics of all the samples it saw.
    assert scaling["mean"] != pytest.approx(big.age[big.train_ids].mean(), rel=1e-9)
    # Predictions come back in years, not standardized units.
    predicted = series(regressor_predictions)
    assert abs(predicted.mean() - scaling["mean"]) < 0.3 * scaling["std"]
    assert predicted.std() > 0.3 * scaling["std"]


def test_validation_predictions_are_stored_in_original_units(big, regressor):
    fitted = bundle(regressor)
    validation = fitted.validation.set_index("sample_id")
    assert len(validation) == round(GOOD_MODEL["validation_fraction"] * len(big.train_ids))
    assert not set(validation.index) & set(fitted.info["train_samples"])
    np.testing.assert_allclose(validation["true"], big.age[validation.index], rtol=1e-5)
    assert np.abs(validation["predicted"] - validation["true"]).mean() < 10


def test_lookup_answers_repeated_samples_through_the_artifact_api(aam, small):
    """Every sample taken three times: the model artifact keeps its look-up
    references, and predict answers each sample from its copies' target."""
    copies = [small.biom.copy().update_ids({s: f"{s}-{k}" for s in small.ids}, inplace=False)
              for k in range(3)]
    table = copies[0].merge(copies[1]).merge(copies[2])
    frame = small.frame[["age"]].astype(float)
    ages = pd.concat([frame.rename(index=lambda s, k=k: f"{s}-{k}") for k in range(3)])
    ages.index.name = "sample-id"
    model, = aam.methods.fit_regressor(
        table=table_artifact(table), sequences=small.sequences,
        metadata=qiime2.Metadata(ages).get_column("age"), lookup_neighbours=2, **TINY)
    model.validate(level="max")        # lookup.safetensors is part of the format
    fitted = bundle(model)
    assert fitted.lookup is not None and fitted.info["neighbour_lookup"]["tolerance"] is not None
    predictions, = aam.methods.predict(model=model, table=small.table,
                                       sequences=small.sequences)
    predicted = series(predictions)
    np.testing.assert_allclose(predicted, frame["age"][predicted.index])


# --- pipelines ------------------------------------------------------------------------


def test_regress_samples_outputs(aam, small):
    test_size = 0.25
    model, predictions, summary, visualization = aam.pipelines.regress_samples(
        table=small.table, sequences=small.sequences, metadata=small.metadata.get_column("age"),
        test_size=test_size, **TINY)
    assert str(model.type) == "AAMModel[Regressor]"
    assert str(predictions.type) == "SampleData[RegressorPredictions]"
    assert isinstance(summary, qiime2.Visualization)
    assert isinstance(visualization, qiime2.Visualization)
    predicted = series(predictions)
    n = len(small.ids)
    assert len(predicted) == round(test_size * n)
    # The model saw only the training part; the predictions cover only the test part.
    fitted = bundle(model)
    assert fitted.info["n_samples"] == n - len(predicted)
    assert not set(predicted.index) & set(fitted.info["train_samples"])
    assert set(predicted.index) < set(small.ids)


def test_classify_samples_outputs_and_stratified_split(aam, small):
    # A rare class of 3 among 32: a plain random split of 20% would often miss it.
    labels = np.where(np.arange(len(small.ids)) % 2 == 0, "even", "odd").astype(object)
    labels[[1, 4, 7]] = "rare"
    metadata = metadata_of(ids=small.ids, label=list(labels))
    test_size = 0.2
    model, predictions, summary, visualization, probabilities = aam.pipelines.classify_samples(
        table=small.table, sequences=small.sequences, metadata=metadata.get_column("label"),
        test_size=test_size, **TINY)
    assert str(model.type) == "AAMModel[Classifier]"
    assert str(predictions.type) == "SampleData[ClassifierPredictions]"
    assert str(probabilities.type) == "SampleData[Probabilities]"
    assert isinstance(visualization, qiime2.Visualization)
    predicted = series(predictions)
    truth = pd.Series(labels, index=small.ids)
    counts = truth.value_counts()
    assert len(predicted) == sum(max(1, round(test_size * c)) for c in counts)
    assert set(truth[predicted.index]) == {"even", "odd", "rare"}
    fitted = bundle(model)
    assert fitted.info["classes"] == ["even", "odd", "rare"]
    assert not set(predicted.index) & set(fitted.info["train_samples"])
    frame = probabilities.view(pd.DataFrame)
    assert sorted(frame.index) == sorted(predicted.index)
    assert list(frame.columns) == ["even", "odd", "rare"]


# --- embed and predict-distances ------------------------------------------------------


def test_embed_gives_one_ordination_row_per_sample(aam, big, regressor):
    embeddings, = aam.methods.embed(model=regressor, table=big.test, sequences=big.sequences)
    assert str(embeddings.type) == "PCoAResults"
    ordination = embeddings.view(skbio.OrdinationResults)
    assert sorted(ordination.samples.index) == big.test_ids
    assert ordination.samples.shape[1] >= 2
    assert np.isfinite(ordination.samples.to_numpy()).all()
    assert ordination.proportion_explained.sum() == pytest.approx(1.0)
    assert (np.diff(ordination.eigvals.to_numpy()) <= 1e-9).all()


def test_predict_distances_over_the_table_samples(aam, small, tiny_encoder):
    distances, = aam.methods.predict_distances(encoder=tiny_encoder, table=small.table,
                                               sequences=small.sequences)
    assert str(distances.type) == "DistanceMatrix"
    matrix = distances.view(skbio.DistanceMatrix)
    assert list(matrix.ids) == small.ids
    values = matrix.data
    assert (values >= 0).all() and (values <= 1).all()
    assert np.allclose(np.diag(values), 0) and np.allclose(values, values.T)
    assert values[np.triu_indices(len(values), 1)].std() > 0


# --- bad input ------------------------------------------------------------------------


def test_samples_missing_from_metadata_error_names_count_and_ids(aam, small):
    kept = small.ids[3:]
    metadata = metadata_of(ids=kept, age=small.frame["age"][kept].astype(float).tolist())
    with pytest.raises(ValueError, match=r"3 sample\(s\) of the table are missing") as info:
        aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                  metadata=metadata.get_column("age"), **TINY)
    assert small.ids[0] in str(info.value)


def test_samples_missing_from_metadata_ignored_on_request(aam, small):
    kept = small.ids[3:]
    metadata = metadata_of(ids=kept, age=small.frame["age"][kept].astype(float).tolist())
    model, = aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                       metadata=metadata.get_column("age"),
                                       missing_samples="ignore", **{**TINY, "epochs": 1})
    fitted = bundle(model)
    assert fitted.info["n_samples"] == len(kept)
    assert set(fitted.info["train_samples"]) <= set(kept)


def test_missing_target_values_are_dropped(aam, small):
    ages = small.frame["age"].astype(float).to_numpy().copy()
    ages[[0, 5, 9]] = np.nan
    metadata = metadata_of(ids=small.ids, age=list(ages))
    model, = aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                       metadata=metadata.get_column("age"),
                                       **{**TINY, "epochs": 1})
    fitted = bundle(model)
    assert fitted.info["n_samples"] == len(small.ids) - 3
    dropped = {small.ids[i] for i in (0, 5, 9)}
    seen = set(fitted.info["train_samples"]) | set(fitted.validation["sample_id"])
    assert len(seen) == len(small.ids) - 3 and not seen & dropped


def test_single_class_is_refused(aam, small):
    metadata = metadata_of(ids=small.ids, site=["only"] * len(small.ids))
    with pytest.raises(ValueError, match=r"Only one class \(only\)"):
        aam.methods.fit_classifier(table=small.table, sequences=small.sequences,
                                   metadata=metadata.get_column("site"), **TINY)


def test_class_too_small_for_the_stratified_validation_split(aam, small):
    labels = ["a", "b"] * (len(small.ids) // 2)
    labels[0] = "lonely"
    metadata = metadata_of(ids=small.ids, site=labels)
    with pytest.raises(ValueError, match=r"lonely have a single sample.*stratified"):
        aam.methods.fit_classifier(table=small.table, sequences=small.sequences,
                                   metadata=metadata.get_column("site"), **TINY)


def test_class_too_small_for_the_stratified_test_split(aam, small):
    labels = ["a", "b"] * (len(small.ids) // 2)
    labels[0] = "lonely"
    metadata = metadata_of(ids=small.ids, site=labels)
    with pytest.raises(ValueError, match=r"lonely have fewer than 3 samples.*train/test split"):
        aam.pipelines.classify_samples(table=small.table, sequences=small.sequences,
                                       metadata=metadata.get_column("site"), **TINY)


def test_two_sample_class_is_refused_by_the_pipeline_itself(aam, small):
    # One goes to the test part, leaving one: too few for the fit's validation split.
    labels = ["a", "b"] * (len(small.ids) // 2)
    labels[0] = labels[1] = "pair"
    metadata = metadata_of(ids=small.ids, site=labels)
    with pytest.raises(ValueError, match=r"pair have fewer than 3 samples.*validation_fraction"):
        aam.pipelines.classify_samples(table=small.table, sequences=small.sequences,
                                       metadata=metadata.get_column("site"), **TINY)


def test_no_table_sample_in_metadata_is_named(aam, small):
    metadata = metadata_of(ids=["elsewhere-1", "elsewhere-2"], age=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"None of the table's 32 samples has a value in 'age'"):
        aam.methods.fit_regressor(table=small.table, sequences=small.sequences,
                                  metadata=metadata.get_column("age"), missing_samples="ignore",
                                  **TINY)


def test_too_few_samples(aam, small):
    few = table_artifact(small.biom.filter(small.ids[:3], inplace=False))
    with pytest.raises(ValueError, match=r"3 samples are too few"):
        aam.methods.fit_regressor(table=few, sequences=small.sequences,
                                  metadata=small.metadata.get_column("age"), **TINY)


def test_test_size_leaving_no_test_sample(aam, small):
    with pytest.raises(ValueError, match=r"both parts need samples"):
        aam.pipelines.regress_samples(table=small.table, sequences=small.sequences,
                                      metadata=small.metadata.get_column("age"),
                                      test_size=0.001, **TINY)


def test_features_without_sequences_in_predict(aam, big, regressor):
    features = list(big.test_biom.ids(axis="observation"))
    sequences = big.sequences.view(pd.Series).drop(features[:2])
    partial = qiime2.Artifact.import_data("FeatureData[Sequence]", sequences)
    with pytest.raises(ValueError, match=r"2 feature\(s\) in the table have no sequence") as info:
        aam.methods.predict(model=regressor, table=big.test, sequences=partial)
    assert features[0] in str(info.value)


def test_all_zero_table_is_refused(aam, small, regressor):
    zeros = table_artifact(biom.Table(np.zeros((len(small.biom.ids(axis="observation")),
                                                len(small.ids))),
                                      list(small.biom.ids(axis="observation")), small.ids))
    with pytest.raises(ValueError, match=r"Only 0 sample\(s\) with non-zero counts"):
        aam.methods.fit_regressor(table=zeros, sequences=small.sequences,
                                  metadata=small.metadata.get_column("age"), **TINY)
    with pytest.raises(ValueError, match=r"Only 0 sample\(s\) with non-zero counts"):
        aam.methods.predict(model=regressor, table=zeros, sequences=small.sequences)


# --- the CLI --------------------------------------------------------------------------


def qiime(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "XDG_CONFIG_HOME": os.path.join(VENV, "qiime-config")}
    return subprocess.run([QIIME, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_predict_through_the_cli(big, regressor, regressor_predictions, tmp_path):
    regressor.save(str(tmp_path / "model.qza"))
    big.test.save(str(tmp_path / "table.qza"))
    big.sequences.save(str(tmp_path / "sequences.qza"))
    result = qiime("aam", "predict", "--i-model", tmp_path / "model.qza",
                   "--i-table", tmp_path / "table.qza", "--i-sequences", tmp_path / "sequences.qza",
                   "--p-device", "cpu", "--o-predictions", tmp_path / "predictions.qza")
    assert result.returncode == 0, result.stderr
    loaded = qiime2.Artifact.load(str(tmp_path / "predictions.qza"))
    assert str(loaded.type) == "SampleData[RegressorPredictions]"
    expected = series(regressor_predictions)
    pd.testing.assert_series_equal(series(loaded)[expected.index], expected, atol=1e-4)


def test_fit_regressor_cli_names_missing_samples_and_writes_nothing(small, tmp_path):
    small.table.save(str(tmp_path / "table.qza"))
    small.sequences.save(str(tmp_path / "sequences.qza"))
    kept = small.ids[2:]
    metadata_of(ids=kept, age=small.frame["age"][kept].astype(float).tolist()).save(
        str(tmp_path / "metadata.tsv"))
    result = qiime("aam", "fit-regressor", "--i-table", tmp_path / "table.qza",
                   "--i-sequences", tmp_path / "sequences.qza",
                   "--m-metadata-file", tmp_path / "metadata.tsv", "--m-metadata-column", "age",
                   "--p-epochs", 1, "--p-embedding-dim", 16, "--p-attention-layers", 1,
                   "--o-model", tmp_path / "model.qza")
    assert result.returncode != 0
    assert "2 sample(s) of the table are missing from the metadata" in result.stderr
    assert small.ids[0] in result.stderr
    assert not (tmp_path / "model.qza").exists()


# --- usage examples -------------------------------------------------------------------


@pytest.mark.parametrize("kind, action, outputs", [
    ("methods", "fit_regressor", {"regressor": "AAMModel[Regressor]",
                                  "ensemble_regressor": "AAMModel[Regressor]",
                                  "site_conditioned_regressor": "AAMModel[Regressor]"}),
    ("methods", "fit_classifier", {"classifier": "AAMModel[Classifier]"}),
    ("methods", "predict", {"predictions": "SampleData[RegressorPredictions]"}),
    ("methods", "predict_probabilities", {"probabilities": "SampleData[Probabilities]"}),
    ("methods", "embed", {"embeddings": "PCoAResults"}),
    ("methods", "predict_distances", {"predicted_distances": "DistanceMatrix"}),
    ("pipelines", "regress_samples", {"age-model": "AAMModel[Regressor]",
                                      "age-predictions": "SampleData[RegressorPredictions]",
                                      "age-accuracy_results": "Visualization"}),
    ("pipelines", "classify_samples", {"site-model": "AAMModel[Classifier]",
                                       "site-predictions": "SampleData[ClassifierPredictions]",
                                       "site-probabilities": "SampleData[Probabilities]",
                                       "site-accuracy_results": "Visualization"}),
])
def test_usage_examples_run(aam, kind, action, outputs):
    from qiime2.sdk.usage import ExecutionUsage
    examples = getattr(getattr(aam, kind), action).examples
    assert examples
    rendered = {}
    for example in examples.values():      # each example stands alone
        use = ExecutionUsage()
        example(use)
        rendered.update(use.render())
    for name, type_ in outputs.items():
        assert str(rendered[name].execute().type) == type_
