"""Tests of q2_aam.core.metrics: hand-made cases against sklearn.metrics and by hand,
and a fit's validation metrics against the visualizers' numbers on the same
predictions. No QIIME 2 is imported here."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

from q2_aam import _metrics
from q2_aam.core import metrics, supervised

# 'd' is predicted (once) but never true; 'c' is true (once) but never predicted right.
TRUE = list("aaabbc")
PREDICTED = list("aabbcd")


# --- regression -----------------------------------------------------------------------


def test_regression_metrics_match_sklearn_and_hand():
    true, predicted = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # errors 0, 1, -1, 1; SS_res = 3; SS_tot = 5; covariance sum 5.5; SS_pred = 8.75
    result = metrics.regression_metrics(true, predicted)
    assert result == pytest.approx({"mae": 0.75, "rmse": math.sqrt(0.75), "r2": 1 - 3 / 5})
    assert result == pytest.approx({
        "mae": skm.mean_absolute_error(true, predicted),
        "rmse": math.sqrt(skm.mean_squared_error(true, predicted)),
        "r2": skm.r2_score(true, predicted)})
    assert metrics.pearson_r(true, predicted) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert metrics.pearson_r(true, predicted) == pytest.approx(
        np.corrcoef(true, predicted)[0, 1])


def test_r2_and_pearson_are_nan_where_undefined():
    # sklearn's r2_score says 0.0 here (1.0 for a perfect constant fit): no such number.
    assert math.isnan(metrics.regression_metrics([2.0, 2.0], [1.0, 3.0])["r2"])
    assert math.isnan(metrics.r2([2.0, 2.0], [2.0, 2.0]))
    assert math.isnan(metrics.pearson_r([2.0, 2.0], [1.0, 3.0]))
    assert math.isnan(metrics.pearson_r([1.0, 3.0], [2.0, 2.0]))
    assert math.isnan(metrics.pearson_r([1.0], [2.0]))


# --- classification -------------------------------------------------------------------


def test_class_report_matches_sklearn_with_a_class_only_predicted():
    report = metrics.class_report(TRUE, PREDICTED)
    expected = skm.classification_report(TRUE, PREDICTED, output_dict=True, zero_division=0)
    assert report.index.tolist() == ["a", "b", "c", "d"]
    for label in "abcd":
        for ours, theirs in [("precision", "precision"), ("recall", "recall"),
                             ("F1", "f1-score"), ("support", "support")]:
            assert report.loc[label, ours] == pytest.approx(expected[label][theirs])
    # By hand: a 1, 2/3, 0.8; b 0.5, 0.5, 0.5; c never predicted right: 0;
    # d only predicted: precision 0 (its one prediction is wrong), recall 0/0 -> 0.
    assert report["precision"].tolist() == pytest.approx([1, 0.5, 0, 0])
    assert report["recall"].tolist() == pytest.approx([2 / 3, 0.5, 0, 0])
    assert report["F1"].tolist() == pytest.approx([0.8, 0.5, 0, 0])
    assert report["support"].tolist() == [3, 2, 1, 0]


def test_macro_averages_count_a_class_only_predicted():
    macro = metrics.macro_average(TRUE, PREDICTED)
    expected = skm.classification_report(TRUE, PREDICTED, output_dict=True,
                                         zero_division=0)["macro avg"]
    assert macro == pytest.approx({"precision": expected["precision"],
                                   "recall": expected["recall"], "F1": expected["f1-score"]})
    # Four classes, 'd' included (over the three true classes it would be 1.3 / 3).
    assert macro["F1"] == pytest.approx((0.8 + 0.5 + 0 + 0) / 4)
    assert macro["F1"] == pytest.approx(skm.f1_score(TRUE, PREDICTED, average="macro",
                                                     zero_division=0))
    result = metrics.classification_metrics(TRUE, PREDICTED)
    assert result == pytest.approx({"accuracy": 3 / 6, "macro_f1": 1.3 / 4})
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(TRUE, PREDICTED))


def test_class_codes_and_labels_give_the_same_metrics():
    codes = {label: k for k, label in enumerate("abcd")}
    as_codes = metrics.classification_metrics(np.array([codes[c] for c in TRUE]),
                                              np.array([codes[c] for c in PREDICTED]))
    assert as_codes == metrics.classification_metrics(TRUE, PREDICTED)


def test_confusion_counts_match_sklearn_in_the_order_given():
    counts = metrics.confusion_counts(TRUE, PREDICTED, ["d", "c", "b", "a"])
    assert counts.index.tolist() == counts.columns.tolist() == ["d", "c", "b", "a"]
    assert counts.to_numpy().tolist() == skm.confusion_matrix(
        TRUE, PREDICTED, labels=["d", "c", "b", "a"]).tolist()
    assert counts.loc["c", "d"] == 1 and counts.loc["a", "a"] == 2   # rows true


def test_classes_must_be_exactly_the_compared_ones():
    # An extra class would count with F1 0 in the macro averages; a missing one would
    # drop samples from the counts.
    with pytest.raises(ValueError, match=r"must be the classes among the true and predicted"):
        metrics.class_report(TRUE, PREDICTED, list("abcde"))
    with pytest.raises(ValueError, match=r"\['a', 'b', 'c', 'd'\]"):
        metrics.confusion_counts(TRUE, PREDICTED, list("abc"))


def test_roc_matches_sklearn_and_counts_ties_as_half():
    # Positive scores 0.9, 0.5; negative 0.5, 0.1: 3.5 of the 4 pairs ranked right.
    fpr, tpr, auc = metrics.roc_curve([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert auc == pytest.approx(0.875)
    assert auc == pytest.approx(skm.roc_auc_score([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]))


def test_roc_needs_positive_and_negative_samples():
    with pytest.raises(ValueError, match="all 2 are positive"):
        metrics.roc_curve([1, 1], [0.2, 0.4])


# --- a fit's validation metrics are the visualizers' numbers --------------------------


def evaluate(task, info, targets, raw_outputs, monkeypatch):
    """`supervised.evaluate_targets` on a stand-in model whose outputs are `raw_outputs`."""
    monkeypatch.setattr(supervised, "predict_outputs",
                        lambda model, data, indices, batch_size, device:
                        {"target": raw_outputs[indices]})
    ids = [f"s{k}" for k in range(len(targets))]
    data = SimpleNamespace(sample_ids=ids, targets=np.asarray(targets))
    return supervised.evaluate_targets(info, task, batch_size=4)(
        None, data, np.arange(len(targets)), "cpu")


def test_classifier_validation_metrics_are_the_visualizers(monkeypatch):
    classes = ["a", "b", "c", "d"]
    logits = np.full((len(TRUE), len(classes)), -5.0, dtype=np.float32)
    logits[np.arange(len(TRUE)), [classes.index(c) for c in PREDICTED]] = 5.0
    result, detail = evaluate("classifier", {"classes": classes},
                              [classes.index(c) for c in TRUE], logits, monkeypatch)
    # What summarize (and confusion-matrix) computes from the validation predictions:
    true, predicted = detail["true"].astype(str), detail["predicted"].astype(str)
    assert predicted.tolist() == PREDICTED
    assert result["accuracy"] == _metrics.accuracy(true, predicted) == 0.5
    assert result["macro_f1"] == _metrics.macro_average(true, predicted)["F1"]
    assert result["macro_f1"] == pytest.approx(1.3 / 4)


def test_regressor_validation_metrics_are_the_visualizers(monkeypatch):
    true, predicted = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0])
    scale = {"mean": 2.5, "std": 2.0}       # the model works in standardized units
    result, detail = evaluate(
        "regressor", {"target_scaling": scale}, (true - 2.5) / 2.0,
        ((predicted - 2.5) / 2.0)[:, None].astype(np.float32), monkeypatch)
    page = _metrics.regression_metrics(detail["true"], detail["predicted"])
    assert result == pytest.approx({"mae": page["MAE"], "rmse": page["RMSE"],
                                    "r2": page["R^2"]}, rel=1e-12)
    assert result["mae"] == pytest.approx(0.75, rel=1e-6)


def test_fits_and_visualizers_share_one_implementation():
    assert supervised.classification_metrics is metrics.classification_metrics
    assert _metrics.macro_average is metrics.macro_average
