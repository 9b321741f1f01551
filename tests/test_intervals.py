"""Prediction intervals: the 'quantile' regression loss, intervals from binned and
quantile regressors (their coverage of held-out simulated samples), the
SampleData[AAMPredictionIntervals] artifact, and the scatterplot drawing them."""
import math

import biom

import numpy as np
import pandas as pd
import pytest
import qiime2
import torch

from q2_aam.core.bundle import ModelBundle, check_info
from q2_aam.core.config import ModelConfig
from q2_aam.core.losses import quantile_regression_loss
from q2_aam.core.model import build_model
from q2_aam.core.targets import (CALIBRATION_GRID, QUANTILE_LEVELS, TargetCodec, binned_cdf,
                                 binned_median, binned_quantile, calibration_info, quantile_at,
                                 quantile_cdf)

from conftest import TINY_MODEL
from test_visualizers import check_in_browser

# Coverage on simulated data: big enough that a fitted model's errors come from
# the data rather than from too few samples, small enough to fit two models in
# well under a minute on one CPU thread.
COVERAGE_DATA = dict(n_samples=600, n_asvs=60, seq_length=60, depth=500, random_seed=3)
HELD_OUT = 200
COVERAGE_FIT = dict(**TINY_MODEL, kmer_size=4, epochs=20, batch_size=16, learning_rate=3e-3,
                    patience=8, validation_fraction=0.3, asv_dropout=0.0,
                    lookup_neighbours=0, device="cpu", random_state=0)
LEVEL = 0.8
FAST = dict(**TINY_MODEL, epochs=1, batch_size=8, validation_fraction=0.25, device="cpu",
            random_state=0, lookup_neighbours=0)


# --- the codec, by hand ---------------------------------------------------------------


def test_binned_quantiles_are_the_cdf_the_median_reads():
    centers = np.array([0.0, 1.0, 2.0, 4.0])
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]))
    np.testing.assert_allclose(binned_quantile(logits, centers, 0.5),
                               binned_median(logits, centers))
    # CDF at the centers: cumulative mass less half the center's own.
    np.testing.assert_allclose(binned_cdf(logits, centers, np.array([2.0, 0.0])), [0.45, 0.35])
    # The inverse within the CDF's range: [0.05, 0.8] and [0.35, 0.95].
    for q in (0.1, 0.3, 0.62, 0.9):
        np.testing.assert_allclose(binned_cdf(logits, centers, binned_quantile(logits, centers, q)),
                                   [np.clip(q, 0.05, 0.8), np.clip(q, 0.35, 0.95)])
    # Below the first center's half mass, the quantile is the first center.
    assert binned_quantile(logits, centers, 0.01).tolist() == [0.0, 0.0]


def test_quantile_outputs_are_sorted_interpolated_and_inverted():
    levels = np.array(QUANTILE_LEVELS)
    codec = TargetCodec("regressor", mean=10.0, std=2.0, quantile_levels=levels)
    raw = np.array([np.linspace(-2, 2, len(levels))[::-1]])     # crossing: all reversed
    quantiles = codec.quantiles(raw)
    assert (np.diff(quantiles, axis=1) >= 0).all() and quantiles[0, 0] == pytest.approx(6.0)
    predicted, _ = codec.decode(raw)
    assert predicted[0] == pytest.approx(10.0)               # the 0.5 level's output
    # 0.8 interval: exactly the 0.1 and 0.9 outputs; 0.6: halfway between 0.25 and 0.1.
    lower, upper = codec.intervals(raw, 0.8)
    assert (lower[0], upper[0]) == pytest.approx((quantiles[0, 2], quantiles[0, 6]))
    lower, _ = codec.intervals(raw, 0.65)
    assert lower[0] == pytest.approx((quantiles[0, 2] + quantiles[0, 3]) / 2)
    for q in (0.01, 0.07, 0.5, 0.93, 0.99):        # beyond the grid: linear both ways
        value = quantile_at(quantiles, levels, q)
        assert quantile_cdf(quantiles, levels, value)[0] == pytest.approx(q)


def test_a_quantile_regressor_reaches_the_level_its_grid_spans():
    codec = TargetCodec("regressor", quantile_levels=np.array(QUANTILE_LEVELS))
    codec.intervals(np.zeros((1, len(QUANTILE_LEVELS))), 0.95)
    with pytest.raises(ValueError, match="at most 0.95; got 0.99"):
        codec.intervals(np.zeros((1, len(QUANTILE_LEVELS))), 0.99)


def test_a_single_value_codec_gives_no_interval():
    with pytest.raises(ValueError, match="'binned' or 'quantile'"):
        TargetCodec("regressor").intervals(np.zeros((1, 1)), 0.9)


def test_pinball_loss_by_hand():
    levels = torch.tensor([0.1, 0.5, 0.9])
    pred = torch.tensor([[0.0, 0.0, 0.0]])
    # target 1 above every prediction: each level pays level x 1
    assert quantile_regression_loss(pred, torch.tensor([1.0]), levels).item() == \
        pytest.approx((0.1 + 0.5 + 0.9) / 3)
    # target -2 below: each pays (1 - level) x 2
    assert quantile_regression_loss(pred, torch.tensor([-2.0]), levels).item() == \
        pytest.approx(2 * (0.9 + 0.5 + 0.1) / 3)


def test_calibration_maps_held_out_cdf_values_to_probabilities():
    # Calibrated: CDF values spread evenly, the map is the identity.
    even = calibration_info(np.arange(1, 100) / 100)
    np.testing.assert_allclose(even["probabilities"], CALIBRATION_GRID, atol=1e-6)
    assert even["validation_samples"] == 99
    # Too narrow: true values fall in the outer tails, so the map reaches further out.
    narrow = np.array(calibration_info(np.r_[np.full(20, 0.01), np.full(59, 0.5),
                                             np.full(20, 0.99)])["probabilities"])
    assert narrow[10] < 0.1 and narrow[90] > 0.9
    assert calibration_info(np.array([np.nan])) is None


def test_an_ensemble_averages_its_members_quantiles():
    cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1,
                      task="regressor", n_outputs=3, quantile_outputs=True, ensemble_size=2)
    ensemble = build_model(cfg).eval()
    from q2_aam.core.data import SampleSet
    sequences = {"a": "ACGT" * 10, "b": "TTGCA" * 8}
    batch = SampleSet(np.array([[5.0, 2.0]]), ["s"], list(sequences), sequences, 40,
                      16).collate(np.arange(1))
    with torch.no_grad():
        members = torch.stack([m(batch)["target"] for m in ensemble.members])
        assert torch.allclose(ensemble(batch)["target"], members.mean(0))


@pytest.mark.parametrize("info, message", [
    ({"target_quantile_levels": [0.1, 0.5, 0.8]}, "symmetric around the 0.5"),
    ({"target_quantile_levels": [0.25, 0.5, 0.75, 0.9]}, "symmetric"),
    ({"target_quantile_levels": [0.25, 0.5, 0.75],
      "interval_calibration": {"probabilities": [0.0, 1.0], "validation_samples": 3}},
     "'interval_calibration' must hold"),
])
def test_model_info_of_quantile_regressors_is_checked(info, message):
    cfg = ModelConfig(task="regressor", n_outputs=len(info["target_quantile_levels"]),
                      quantile_outputs=True)
    with pytest.raises(ValueError, match=message):
        check_info(cfg, {"target_scaling": {"mean": 0.0, "std": 1.0}, **info})


def test_quantile_levels_need_quantile_outputs():
    cfg = ModelConfig(task="regressor", n_outputs=3)
    with pytest.raises(ValueError, match="quantile_outputs is true"):
        check_info(cfg, {"target_scaling": {"mean": 0.0, "std": 1.0},
                         "target_quantile_levels": [0.25, 0.5, 0.75]})


# --- coverage on held-out simulated samples -------------------------------------------


@pytest.fixture(scope="module")
def coverage_data():
    """(training table, held-out table, sequences, ages) of COVERAGE_DATA."""
    from q2_aam._examples import to_views
    from q2_aam.core.simulate import simulate
    table, sequences, _, _ = to_views(simulate(**COVERAGE_DATA))
    ids = list(table.ids(axis="sample"))
    held_out = set(np.random.default_rng(0).choice(ids, HELD_OUT, replace=False))
    parts = [table.filter([i for i in ids if (i in held_out) == keep], axis="sample",
                          inplace=False) for keep in (False, True)]
    ages = simulate(**COVERAGE_DATA).metadata["age"]
    return ([qiime2.Artifact.import_data("FeatureTable[Frequency]", part) for part in parts]
            + [qiime2.Artifact.import_data("FeatureData[Sequence]", sequences), ages])


@pytest.fixture(scope="module", params=["binned", "quantile"])
def held_out_intervals(request, aam, coverage_data):
    """(the fitted model, its LEVEL intervals of the held-out samples, their ages)."""
    train, held_out, sequences, ages = coverage_data
    metadata = qiime2.Metadata(ages.to_frame())
    model, = aam.methods.fit_regressor(table=train, sequences=sequences,
                                       metadata=metadata.get_column("age"),
                                       regression_loss=request.param, **COVERAGE_FIT)
    intervals, = aam.methods.predict_intervals(model=model, table=held_out,
                                               sequences=sequences, level=LEVEL)
    frame = intervals.view(pd.DataFrame)
    return model, frame, ages.loc[frame.index]


def test_intervals_reach_nominal_coverage_on_held_out_samples(held_out_intervals):
    model, intervals, true = held_out_intervals
    bundle = model.view(ModelBundle)
    calibrated_on = bundle.info["interval_calibration"]["validation_samples"]
    covered = ((intervals["lower"] <= true) & (true <= intervals["upper"])).to_numpy()
    # Sampling error of the held-out share and of the calibrating validation samples.
    tolerance = 3 * math.sqrt(LEVEL * (1 - LEVEL) * (1 / len(covered) + 1 / calibrated_on))
    assert len(covered) == HELD_OUT and calibrated_on == 120
    assert bundle.validation["cdf_at_true"].between(0, 1).all()
    assert abs(covered.mean() - LEVEL) <= tolerance, (covered.mean(), tolerance)
    # The model learned age: the intervals are far narrower than the age range.
    assert (intervals["upper"] - intervals["lower"]).mean() < (true.max() - true.min()) / 3


def test_intervals_hold_their_prediction_and_widen_with_the_level(held_out_intervals, aam,
                                                                  coverage_data):
    model, intervals, _ = held_out_intervals
    assert (intervals["lower"] <= intervals["prediction"]).all()
    assert (intervals["prediction"] <= intervals["upper"]).all()
    assert (intervals["level"] == LEVEL).all()
    _, held_out, sequences, _ = coverage_data
    wider, = aam.methods.predict_intervals(model=model, table=held_out, sequences=sequences,
                                           level=0.95)
    wider = wider.view(pd.DataFrame).loc[intervals.index]
    assert (wider["lower"] <= intervals["lower"]).all()
    assert (wider["upper"] >= intervals["upper"]).all()
    # The prediction is the model's own (no look-up): predict gives the same values.
    predicted, = aam.methods.predict(model=model, table=held_out, sequences=sequences)
    np.testing.assert_allclose(predicted.view(pd.Series).loc[intervals.index],
                               intervals["prediction"], rtol=1e-6)


# --- the action and its artifact -------------------------------------------------------


def test_single_value_regressors_cannot_give_intervals(aam, artifacts):
    table, sequences, _, metadata = artifacts
    model, = aam.methods.fit_regressor(table=table, sequences=sequences,
                                       metadata=metadata.get_column("age"),
                                       regression_loss="l1", **FAST)
    with pytest.raises(ValueError, match="regression_loss 'l1'.*cannot give prediction "
                                         "intervals.*'binned' or 'quantile'"):
        aam.methods.predict_intervals(model=model, table=table, sequences=sequences)


def test_intervals_artifact_views_exports_and_tabulates(aam, artifacts, tmp_path):
    table, sequences, _, metadata = artifacts
    model, = aam.methods.fit_regressor(table=table, sequences=sequences,
                                       metadata=metadata.get_column("age"),
                                       regression_loss="quantile", **FAST)
    intervals, = aam.methods.predict_intervals(model=model, table=table, sequences=sequences,
                                               level=0.5)
    assert str(intervals.type) == "SampleData[AAMPredictionIntervals]"
    frame = intervals.view(qiime2.Metadata).to_dataframe()
    assert list(frame.columns) == ["prediction", "lower", "upper", "level"]
    assert set(frame.index) == set(table.view(pd.DataFrame).index)
    intervals.export_data(str(tmp_path / "exported"))
    header = (tmp_path / "exported" / "intervals.tsv").read_text().splitlines()[0]
    assert header == "sample-id\tprediction\tlower\tupper\tlevel"
    from qiime2.plugins import metadata as q2_metadata
    tabulated, = q2_metadata.visualizers.tabulate(input=intervals.view(qiime2.Metadata))
    assert isinstance(tabulated, qiime2.Visualization)


def test_an_ensemble_calibrates_on_every_members_validation_samples(aam, artifacts):
    table, sequences, _, metadata = artifacts
    model, = aam.methods.fit_regressor(table=table, sequences=sequences,
                                       metadata=metadata.get_column("age"),
                                       regression_loss="binned",
                                       **{**FAST, "ensemble_size": 2})
    bundle = model.view(ModelBundle)
    per_member = bundle.validation.groupby("member").size()
    assert bundle.info["interval_calibration"]["validation_samples"] == per_member.sum() == 16
    intervals, = aam.methods.predict_intervals(model=model, table=table, sequences=sequences)
    frame = intervals.view(pd.DataFrame)
    assert ((frame["lower"] <= frame["prediction"]) & (frame["prediction"] <= frame["upper"])).all()


def test_without_validation_samples_the_intervals_are_the_raw_quantiles(aam, artifacts):
    table, sequences, _, metadata = artifacts
    model, = aam.methods.fit_regressor(table=table, sequences=sequences,
                                       metadata=metadata.get_column("age"),
                                       regression_loss="quantile",
                                       **{**FAST, "validation_fraction": 0.0})
    bundle = model.view(ModelBundle)
    assert "interval_calibration" not in bundle.info
    intervals, = aam.methods.predict_intervals(model=model, table=table, sequences=sequences,
                                               level=0.8)
    from q2_aam.core.data import SampleSet
    from q2_aam.core.inference import model_outputs
    data = SampleSet.from_biom(table.view(biom.Table), sequences.view(pd.Series).astype(str),
                               bundle.model_config.max_bp, bundle.model_config.asv_limit)
    raw = TargetCodec.from_info("regressor", bundle.info).quantiles(
        model_outputs(bundle, data, device="cpu")["target"])
    frame = intervals.view(pd.DataFrame).loc[data.sample_ids]
    np.testing.assert_allclose(frame["lower"], raw[:, 2], rtol=1e-6)      # the 0.1 output
    np.testing.assert_allclose(frame["upper"], raw[:, 6], rtol=1e-6)      # the 0.9 output


@pytest.mark.parametrize("row, message", [
    ("s1\t5\t6\t7\t0.9", "must hold the prediction"),
    ("s1\t5\t4\t7\t1.5", "strictly between 0 and 1"),
    ("s1\t5\t4\tseven\t0.9", "not a number"),
    ("s1\t5\t4\t7", "a sample ID and 4 numbers"),
])
def test_malformed_intervals_are_refused_on_import(tmp_path, row, message):
    path = tmp_path / "intervals.tsv"
    path.write_text(f"sample-id\tprediction\tlower\tupper\tlevel\n{row}\n")
    with pytest.raises(qiime2.plugin.ValidationError, match=message):
        qiime2.Artifact.import_data("SampleData[AAMPredictionIntervals]", str(path),
                                    view_type="AAMPredictionIntervalsFormat")


# --- the scatterplot with intervals -----------------------------------------------------


def test_scatterplot_draws_intervals_and_reports_their_coverage(aam, tmp_path, browser):
    ids = [f"s{k}" for k in range(6)]
    truth = qiime2.Metadata(pd.DataFrame({"age": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]},
                                         index=pd.Index(ids, name="id")))
    predicted = pd.Series([12.0, 18.0, 35.0, 40.0, 45.0, 61.0],
                          index=pd.Index(ids, name="id"), name="prediction")
    # s2's interval misses its true 30; s5 has none.
    bounds = pd.DataFrame({"prediction": predicted[:5], "lower": [8.0, 15.0, 31.0, 35.0, 40.0],
                           "upper": [15.0, 25.0, 40.0, 45.0, 55.0], "level": 0.8})
    visualization, = aam.visualizers.scatterplot(
        predictions=qiime2.Artifact.import_data("SampleData[RegressorPredictions]", predicted),
        intervals=qiime2.Artifact.import_data("SampleData[AAMPredictionIntervals]", bounds),
        truth=truth.get_column("age"))
    visualization.export_data(str(tmp_path / "page"))
    html = (tmp_path / "page" / "index.html").read_text()
    assert "<strong>4 of 5</strong> true\n      values (80.0%) lie inside their 80% interval" in html
    assert "1 of the 6 samples compared have no interval" in html
    rows = pd.read_csv(tmp_path / "page" / "scatter.tsv", sep="\t", index_col="sample ID")
    assert rows.loc["s2", "covered"] == False and rows.loc["s0", "covered"] == True  # noqa: E712
    assert pd.isna(rows.loc["s5", "covered"]) and rows.loc["s1", "lower"] == 15.0
    page = check_in_browser(browser, tmp_path / "page", tmp_path)
    assert "4 of 5 true values (80.0%) lie inside their 80% interval" in " ".join(page.text.split())


def test_scatterplot_intervals_example_runs(aam):
    from qiime2.sdk.usage import ExecutionUsage
    use = ExecutionUsage()
    aam.visualizers.scatterplot.examples["scatterplot_intervals"](use)
    assert isinstance(use.render()["age_scatterplot_intervals"].execute(), qiime2.Visualization)
