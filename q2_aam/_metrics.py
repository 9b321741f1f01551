"""The visualizers' metrics: sample alignment and page-specific helpers around
core.metrics, which computes every accuracy number (from sklearn.metrics) for the
visualizers and a fit's validation alike.
"""
import numpy as np
import pandas as pd

from .core.metrics import (accuracy, class_report, confusion_counts,  # noqa: F401
                           macro_average, pearson_r, roc_curve)
from .core import metrics as core_metrics


def align(predictions: pd.Series, truth: pd.Series, truth_name: str, missing_samples="error"):
    """The samples that have both a prediction and a (non-missing) true value.

    Returns (predictions, truth, note) in the order of `predictions`; `note` says
    what was left out, or is None when every sample matched. With
    `missing_samples` 'error', a prediction without a true value is an error
    (as in q2-sample-classifier); true values without a prediction never are.
    """
    truth = truth.dropna()
    shared = predictions.index[predictions.index.isin(truth.index)]
    unmatched = predictions.index[~predictions.index.isin(truth.index)]
    if len(unmatched) and missing_samples == "error":
        shown = ", ".join(map(str, unmatched[:5])) + (
            f", ... ({len(unmatched) - 5} more)" if len(unmatched) > 5 else "")
        raise ValueError(
            f"{len(unmatched)} predicted sample(s) have no value in '{truth_name}': {shown}. "
            "Add them to the metadata, or use missing_samples='ignore' to compare only the "
            "samples present in both.")
    if len(shared) == 0:
        raise ValueError(
            f"The predictions ({len(predictions)} samples) and the truth column "
            f"'{truth_name}' ({len(truth)} samples with a value) have no sample IDs in common.")
    return predictions.loc[shared], truth.loc[shared], _overlap_note(
        len(shared), len(predictions), len(truth), truth_name)


def _overlap_note(n_shared, n_predictions, n_truth, truth_name):
    if n_shared == n_predictions == n_truth:
        return None
    return (f"Only the {n_shared} samples present in both inputs are compared. Predictions "
            f"without a value in '{truth_name}': {n_predictions - n_shared} of "
            f"{n_predictions}; values in '{truth_name}' without a prediction: "
            f"{n_truth - n_shared} of {n_truth}.")


# --- regression -----------------------------------------------------------------------


def regression_metrics(true, predicted) -> dict:
    """N, MAE, RMSE, R^2 (coefficient of determination of predicted for true) and
    Pearson r, keyed as the page names them; R^2 and r are NaN where undefined
    (constant values)."""
    core = core_metrics.regression_metrics(true, predicted)
    return {"N": len(true), "MAE": core["mae"], "RMSE": core["rmse"], "R^2": core["r2"],
            "Pearson r": pearson_r(true, predicted)}


def least_squares_line(true, predicted):
    """(slope, intercept) of predicted regressed on true, or None for fewer than two
    distinct true values."""
    true = np.asarray(true, dtype=float)
    if len(np.unique(true)) < 2:
        return None
    slope, intercept = np.polyfit(true, np.asarray(predicted, dtype=float), 1)
    # Round-off of the fit, not signal: print an exact fit as "+ 0", not "+ 1e-15".
    if abs(intercept) < 1e-9 * np.abs(true).max():
        intercept = 0.0
    return float(slope), float(intercept)


# --- classification -------------------------------------------------------------------


def row_normalized(counts: pd.DataFrame) -> pd.DataFrame:
    """Each row as fractions of its true class (NaN for a class with no samples)."""
    totals = counts.sum(axis=1).replace(0, np.nan)
    return counts.div(totals, axis=0)


def baseline_accuracy(counts: pd.DataFrame) -> float:
    """Accuracy of always predicting the most frequent true class."""
    support = counts.sum(axis=1)
    return float(support.max() / support.sum())


def one_vs_rest_roc(true: pd.Series, probabilities: pd.DataFrame) -> dict:
    """ROC curve per class that has both positive and negative samples and a
    probability column; {label: (fpr, tpr, auc)}."""
    curves = {}
    for label in probabilities.columns:
        score = probabilities[label].dropna()
        is_positive = (true.loc[score.index] == label).to_numpy()
        if 0 < is_positive.sum() < len(is_positive):
            curves[label] = roc_curve(is_positive, score.to_numpy())
    return curves
