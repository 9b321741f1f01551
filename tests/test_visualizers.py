"""Tests of the visualizers: metrics against hand-computed values, the actions through
the Artifact API and the CLI, and every page opened in headless Chromium."""
import io
import math
import os
import subprocess
import zipfile

import numpy as np
import pandas as pd
import pytest
import qiime2

from q2_aam import _metrics
from q2_aam.core.bundle import ModelBundle
from q2_aam.core.config import ModelConfig
from q2_aam.core.model import build_model


VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv")
QIIME = os.path.join(VENV, "bin", "qiime")
EVIL_ID = "<script>alert(1)</script>"
EVIL_LABEL = "<b>bold</b> & $x"
# A rendered visualization's screenshot is at least this big; a blank page's is not.
MIN_SCREENSHOT_BYTES = 10_000


def metadata(**columns):
    ids = columns.pop("ids")
    return qiime2.Metadata(pd.DataFrame(columns, index=pd.Index(ids, name="id")))


def regressor_predictions(values, ids):
    series = pd.Series(values, index=pd.Index(ids, name="id"), name="prediction")
    return qiime2.Artifact.import_data("SampleData[RegressorPredictions]", series)


def classifier_predictions(labels, ids):
    series = pd.Series(labels, index=pd.Index(ids, name="id"), name="prediction")
    return qiime2.Artifact.import_data("SampleData[ClassifierPredictions]", series)


def exported(visualization, tmp_path, name):
    directory = tmp_path / name
    visualization.export_data(str(directory))
    return directory


def read_tsv(path):
    return pd.read_csv(path, sep="\t", dtype={"sample ID": str})


def check_in_browser(browser, directory, tmp_path):
    page = browser.open(directory / "index.html", screenshot=tmp_path / f"{directory.name}.png")
    assert page.errors == []
    assert page.images, "the page shows no image"
    assert page.broken_images == []
    assert page.dialogs == []
    assert (tmp_path / f"{directory.name}.png").stat().st_size > MIN_SCREENSHOT_BYTES
    return page


# --- metrics, by hand -----------------------------------------------------------------


def test_regression_metrics_by_hand():
    true, predicted = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # errors 0, 1, -1, 1; SS_res = 3; SS_tot = 5; covariance sum 5.5; SS_pred = 8.75
    metrics = _metrics.regression_metrics(true, predicted)
    assert metrics["N"] == 4
    assert metrics["MAE"] == pytest.approx(0.75)
    assert metrics["RMSE"] == pytest.approx(math.sqrt(0.75))
    assert metrics["R^2"] == pytest.approx(1 - 3 / 5)
    assert metrics["Pearson r"] == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert _metrics.least_squares_line(true, predicted) == pytest.approx((1.1, 0.0), abs=1e-12)


def test_regression_metrics_undefined_for_constant_truth():
    metrics = _metrics.regression_metrics([2.0, 2.0], [1.0, 3.0])
    assert math.isnan(metrics["R^2"]) and math.isnan(metrics["Pearson r"])
    assert _metrics.least_squares_line([2.0, 2.0], [1.0, 3.0]) is None


def test_classification_metrics_by_hand():
    true = pd.Series(list("aaabbc"))
    predicted = pd.Series(list("aabbcc"))
    counts = _metrics.confusion_counts(true, predicted, ["a", "b", "c"])
    assert counts.to_numpy().tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert _metrics.accuracy(true, predicted) == pytest.approx(4 / 6)
    assert _metrics.baseline_accuracy(counts) == pytest.approx(3 / 6)
    report = _metrics.class_report(true, predicted, ["a", "b", "c"])
    assert report["precision"].tolist() == pytest.approx([1, 0.5, 0.5])
    assert report["recall"].tolist() == pytest.approx([2 / 3, 0.5, 1])
    assert report["F1"].tolist() == pytest.approx([0.8, 0.5, 2 / 3])
    assert report["support"].tolist() == [3, 2, 1]
    macro = _metrics.macro_average(true, predicted)
    assert macro["precision"] == pytest.approx(2 / 3)
    assert macro["recall"] == pytest.approx(13 / 18)
    assert macro["F1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    fractions = _metrics.row_normalized(counts)
    assert fractions.loc["a"].tolist() == pytest.approx([2 / 3, 1 / 3, 0])


def test_precision_of_a_class_never_predicted_is_zero():
    report = _metrics.class_report(pd.Series(list("ab")), pd.Series(list("aa")), ["a", "b"])
    assert report.loc["b", "precision"] == 0 and report.loc["b", "F1"] == 0


def test_page_macro_f1_is_the_fits_validation_macro_f1(tmp_path):
    """With a class only predicted ('d'), the confusion-matrix section shows the same
    macro F1 and accuracy as a fit's validation metrics (core.metrics) on those labels:
    each class counted once, 'd' with F1 0, so (0.8 + 0.5 + 0 + 0) / 4."""
    from q2_aam._visualizers import classification_section
    from q2_aam.core.supervised import classification_metrics
    true, predicted = pd.Series(list("aaabbc")), pd.Series(list("aabbcd"))
    validation = classification_metrics(true.to_numpy(), predicted.to_numpy())
    assert validation["macro_f1"] == pytest.approx(1.3 / 4)
    section, _ = classification_section(str(tmp_path), true, predicted, None, "test labels")
    assert f"<th>Macro F1</th><td>{validation['macro_f1']:.4g}</td>" in section
    assert f"<th>Accuracy</th><td>{validation['accuracy']:.4g}</td>" in section


def test_roc_counts_ties_as_half():
    # Positive scores 0.9, 0.5; negative 0.5, 0.1: 3.5 of the 4 pairs ranked right.
    fpr, tpr, auc = _metrics.roc_curve([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert auc == pytest.approx(0.875)


def test_align_reports_partial_overlap():
    predictions = pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"])
    truth = pd.Series([1.0, np.nan, 3.0, 4.0], index=["a", "b", "c", "d"])
    predicted, true, note = _metrics.align(predictions, truth, "age", missing_samples="ignore")
    assert predicted.index.tolist() == ["a", "c"] and true.tolist() == [1.0, 3.0]
    assert "Only the 2 samples" in note and "1 of 3" in note and "1 of 3." in note


# --- scatterplot ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scatter_directory(aam, tmp_path_factory):
    ids = ["s1", "s2", EVIL_ID, "s4", "only-predicted"]
    predictions = regressor_predictions([1.0, 3.0, 2.0, 5.0, 9.0], ids)
    truth = metadata(ids=["s1", "s2", EVIL_ID, "s4", "only-true"],
                     age=[1.0, 2.0, 3.0, 4.0, 7.0]).get_column("age")
    visualization, = aam.visualizers.scatterplot(predictions=predictions, truth=truth,
                                                 missing_samples="ignore")
    return exported(visualization, tmp_path_factory.mktemp("viz"), "scatterplot")


def test_scatterplot_files_and_metrics(scatter_directory):
    for name in ("index.html", "scatter.png", "scatter.svg", "scatter.tsv"):
        assert (scatter_directory / name).stat().st_size > 0
    rows = read_tsv(scatter_directory / "scatter.tsv")
    assert sorted(rows["sample ID"]) == sorted(["s1", "s2", EVIL_ID, "s4"])
    assert rows["error"].abs().tolist() == sorted(rows["error"].abs(), reverse=True)
    html = (scatter_directory / "index.html").read_text()
    assert "Only the 4 samples present in both inputs" in html
    assert "<td>0.75</td>" in html            # MAE, as computed by hand above
    assert "<td>0.4</td>" in html             # R^2
    assert "predicted = 1.1 \u00d7 true + 0" in html
    assert EVIL_ID not in html


def test_scatterplot_in_browser(scatter_directory, browser, tmp_path):
    page = check_in_browser(browser, scatter_directory, tmp_path)
    assert EVIL_ID in page.text
    assert not any("alert(1)" in script for script in page.scripts)


def test_scatterplot_without_shared_samples_names_both_counts(aam):
    predictions = regressor_predictions([1.0, 2.0, 3.0], ["a", "b", "c"])
    truth = metadata(ids=["x", "y"], age=[1.0, 2.0]).get_column("age")
    with pytest.raises(ValueError, match=r"predictions \(3 samples\).*'age' \(2 samples"):
        aam.visualizers.scatterplot(predictions=predictions, truth=truth,
                                    missing_samples="ignore")


@pytest.mark.parametrize("visualizer", ["scatterplot", "confusion_matrix"])
def test_missing_samples_error_names_the_predictions_without_truth(aam, visualizer):
    if visualizer == "scatterplot":
        predictions = regressor_predictions([1.0, 2.0, 3.0], ["a", "b", "c"])
        truth = metadata(ids=["a", "b"], age=[1.0, 2.0]).get_column("age")
    else:
        predictions = qiime2.Artifact.import_data(
            "SampleData[ClassifierPredictions]",
            pd.Series(["x", "y", "x"], index=pd.Index(["a", "b", "c"], name="id"),
                      name="prediction"))
        truth = metadata(ids=["a", "b"], age=["x", "y"]).get_column("age")
    with pytest.raises(ValueError, match=r"1 predicted sample\(s\) have no value in 'age': c\. "
                                         r".*missing_samples='ignore'"):
        getattr(aam.visualizers, visualizer)(predictions=predictions, truth=truth)
    getattr(aam.visualizers, visualizer)(predictions=predictions, truth=truth,
                                         missing_samples="ignore")


def test_scatterplot_through_the_cli(tmp_path):
    predictions = regressor_predictions([1.0, 2.5, 2.0], ["a", "b", "c"])
    predictions.save(str(tmp_path / "predictions.qza"))
    metadata(ids=["a", "b", "c"], age=[1.0, 2.0, 3.0]).save(str(tmp_path / "metadata.tsv"))
    result = subprocess.run(
        [QIIME, "aam", "scatterplot", "--i-predictions", str(tmp_path / "predictions.qza"),
         "--m-truth-file", str(tmp_path / "metadata.tsv"), "--m-truth-column", "age",
         "--o-visualization", str(tmp_path / "scatter.qzv")],
        capture_output=True, text=True, env={**os.environ, "XDG_CONFIG_HOME":
                                             os.path.join(VENV, "qiime-config")})
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "scatter.qzv") as archive:
        names = archive.namelist()
    assert any(name.endswith("data/scatter.svg") for name in names)


# --- confusion matrix -----------------------------------------------------------------


@pytest.fixture(scope="module")
def confusion_directory(aam, tmp_path_factory):
    ids = ["s1", "s2", "s3", EVIL_ID, "s5", "s6"]
    predictions = classifier_predictions(["a", "a", EVIL_LABEL, EVIL_LABEL, "c", "c"], ids)
    truth = metadata(ids=ids, site=["a", "a", "a", EVIL_LABEL, EVIL_LABEL, "c"])
    probabilities = qiime2.Artifact.import_data("SampleData[Probabilities]", pd.DataFrame(
        {"a": [0.8, 0.7, 0.3, 0.1, 0.2, 0.1], EVIL_LABEL: [0.1, 0.2, 0.6, 0.8, 0.3, 0.1],
         "c": [0.1, 0.1, 0.1, 0.1, 0.5, 0.8]}, index=pd.Index(ids, name="id")))
    visualization, = aam.visualizers.confusion_matrix(
        predictions=predictions, truth=truth.get_column("site"), probabilities=probabilities)
    return exported(visualization, tmp_path_factory.mktemp("viz"), "confusion_matrix")


def test_confusion_matrix_files_and_metrics(confusion_directory):
    for name in ("confusion_matrix.png", "confusion_matrix.svg", "roc.png", "roc.svg",
                 "per_sample.tsv"):
        assert (confusion_directory / name).stat().st_size > 0
    html = (confusion_directory / "index.html").read_text()
    # The hand-computed case above, with b = EVIL_LABEL: accuracy 4/6, baseline 3/6.
    assert "<td>0.6667</td>" in html and "<td>0.5</td>" in html
    assert EVIL_LABEL not in html and EVIL_ID not in html
    rows = read_tsv(confusion_directory / "per_sample.tsv")
    assert rows["correct"].tolist() == [False, False, True, True, True, True]


def test_confusion_matrix_in_browser(confusion_directory, browser, tmp_path):
    page = check_in_browser(browser, confusion_directory, tmp_path)
    assert EVIL_ID in page.text and EVIL_LABEL in page.text
    assert len(page.images) == 3      # the QIIME 2 logo, the heatmaps and the ROC curves


def test_confusion_matrix_rejects_a_single_class(aam):
    predictions = classifier_predictions(["a", "b", "a"], ["s1", "s2", "s3"])
    truth = metadata(ids=["s1", "s2", "s3"], site=["a", "a", "a"]).get_column("site")
    with pytest.raises(ValueError, match="single class"):
        aam.visualizers.confusion_matrix(predictions=predictions, truth=truth)


# --- summarize ------------------------------------------------------------------------


def hand_made_bundle(task, members=1):
    history = pd.DataFrame({"epoch": [1, 2, 3], "learning_rate": [1e-4, 3e-4, 1e-4],
                            "seconds": [1.0, 1.0, 1.0],
                            "train/loss": [3.0, 2.0, 1.5], "val/loss": [3.2, 2.1, 2.4],
                            "train/target_loss": [2.0, 1.0, 0.5],
                            "val/target_loss": [2.2, 1.1, 1.4]})
    ids = ["v1", EVIL_ID, "v3", "v4"]
    info = {"best_epoch": 2, "training": {"epochs": 3, "batch_size": 8}}
    if task == "regressor":
        info["target_scaling"] = {"mean": 2.5, "std": 1.0}
        validation = pd.DataFrame({"sample_id": ids, "true": [1.0, 2.0, 3.0, 4.0],
                                   "predicted": [1.0, 3.0, 2.0, 5.0]})
    else:
        info["classes"] = ["x", "y"]
        validation = pd.DataFrame({"sample_id": ids, "true": ["x", "x", "y", "y"],
                                   "predicted": ["x", "y", "y", "y"],
                                   "prob:x": [0.9, 0.4, 0.2, 0.3],
                                   "prob:y": [0.1, 0.6, 0.8, 0.7]})
    if members > 1:     # an ensemble's: each member's rows, numbered
        history = pd.concat([history.assign(member=k + 1) for k in range(members)])
        validation = pd.concat([validation.assign(member=k + 1) for k in range(members)])
        info["best_epoch"] = [2 + k for k in range(members)]
    config = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1, task=task,
                         n_outputs=1 if task == "regressor" else 2, ensemble_size=members)
    # Untrained weights: a summary reads the history and validation, not the weights,
    # but a model artifact must hold the weights its configuration describes.
    return ModelBundle(config, state_dict=build_model(config).state_dict(), history=history,
                       info=info, validation=validation,
                       event_files={"run/events.out.tfevents.1": b"not really events"})


@pytest.fixture(scope="module")
def summaries(aam, tmp_path_factory):
    from q2_aam._examples import TINY_MODEL, simulated, to_artifacts
    table, sequences, distances, _ = to_artifacts(simulated())
    encoder, = aam.methods.pretrain(table=table, sequences=sequences,
                                    distance_matrix=distances, **TINY_MODEL)
    models = {"encoder": encoder}
    for task in ("regressor", "classifier"):
        models[task] = qiime2.Artifact.import_data(f"AAMModel[{task.capitalize()}]",
                                                   hand_made_bundle(task))
    models["ensemble"] = qiime2.Artifact.import_data("AAMModel[Classifier]",
                                                     hand_made_bundle("classifier", members=2))
    root = tmp_path_factory.mktemp("viz")
    return {task: exported(aam.visualizers.summarize(model=model)[0], root, f"summary-{task}")
            for task, model in models.items()}


def test_summarize_encoder(summaries):
    directory = summaries["encoder"]
    for name in ("learning_curves.png", "learning_curves.svg", "history.tsv", "unifrac.png",
                 "unifrac.tsv", "tensorboard.zip"):
        assert (directory / name).stat().st_size > 0
    html = (directory / "index.html").read_text()
    assert "tensorboard --logdir tensorboard" in html and "AAM encoder" in html
    with zipfile.ZipFile(directory / "tensorboard.zip") as archive:
        assert all(name.startswith("tensorboard/") for name in archive.namelist())
        assert any("tfevents" in name for name in archive.namelist())


def test_summarize_regressor(summaries):
    directory = summaries["regressor"]
    html = (directory / "index.html").read_text()
    assert "the weights kept are those of the best epoch, epoch 2." in html
    assert "<td>0.75</td>" in html and "<td>0.4</td>" in html   # MAE and R^2 by hand
    assert EVIL_ID not in html
    with zipfile.ZipFile(directory / "tensorboard.zip") as archive:
        assert archive.read("tensorboard/run/events.out.tfevents.1") == b"not really events"
    history = pd.read_csv(io.StringIO((directory / "history.tsv").read_text()), sep="\t")
    assert history["val/loss"].tolist() == [3.2, 2.1, 2.4]


def test_summarize_classifier(summaries):
    directory = summaries["classifier"]
    for name in ("confusion_matrix.png", "roc.png", "per_sample.tsv"):
        assert (directory / name).stat().st_size > 0
    html = (directory / "index.html").read_text()
    assert "<td>0.75</td>" in html       # accuracy: 3 of 4
    assert EVIL_ID not in html


def test_summarize_ensemble(summaries):
    """Each member's curves, best epoch and validation samples (a sample in two
    members' validation splits counts twice)."""
    directory = summaries["ensemble"]
    html = (directory / "index.html").read_text()
    assert "An ensemble of 2 members" in html and "best epoch (2, 3)" in html
    assert "Member 1, at epoch 2" in html and "Member 2, at epoch 3" in html
    assert "<td>0.75</td>" in html       # accuracy: 6 of 8
    per_sample = pd.read_csv(directory / "per_sample.tsv", sep="\t")
    assert len(per_sample) == 8 and per_sample.iloc[:, 0].str.endswith("(member 2)").sum() == 4


@pytest.mark.parametrize("task", ["encoder", "regressor", "classifier"])
def test_summaries_in_browser(summaries, browser, tmp_path, task):
    page = check_in_browser(browser, summaries[task], tmp_path)
    if task != "encoder":
        assert EVIL_ID in page.text


# --- the browser helper and the usage examples ----------------------------------------


def test_browser_helper_sees_every_problem_it_checks_for(browser, tmp_path):
    # A control: the checks above would pass vacuously if the helper saw nothing.
    (tmp_path / "index.html").write_text(
        "<html><body><p>hello</p><img src='missing.png'>"
        "<script>console.error('boom'); alert('hi');</script>"
        "<script>throw new Error('kaboom');</script>"
        "<script>document.body.appendChild(document.createElement('iframe'))"
        ".contentWindow.confirm('from a frame');</script>"
        "<script>setTimeout(() => alert('after load'), 50);</script></body></html>")
    page = browser.open(tmp_path / "index.html", screenshot=tmp_path / "control.png")
    assert any("boom" in error for error in page.errors)                     # console
    assert any("Uncaught Error: kaboom" in error for error in page.errors)    # exception
    assert any("missing.png" in error and "Failed to load" in error for error in page.errors)
    assert page.broken_images == ["missing.png"]
    assert page.dialogs == ["hi", "from a frame", "after load"]
    assert "hello" in page.text
    # The screenshot is the rendered page (a PNG as wide as the window), and one of a
    # page this empty is below the size check_in_browser demands: a blank render fails.
    png = (tmp_path / "control.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1366
    assert len(png) < MIN_SCREENSHOT_BYTES


@pytest.mark.parametrize("action, output", [("scatterplot", "age_scatterplot"),
                                            ("confusion_matrix", "site_confusion_matrix"),
                                            ("summarize", "encoder_summary")])
def test_usage_examples_run(aam, action, output):
    from qiime2.sdk.usage import ExecutionUsage
    use = ExecutionUsage()
    for example in getattr(aam.visualizers, action).examples.values():
        example(use)
    assert isinstance(use.render()[output].execute(), qiime2.Visualization)
