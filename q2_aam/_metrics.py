"""Accuracy metrics behind the visualizers, in plain numpy and pandas.

Written out rather than taken from scikit-learn so that every number in a
visualization can be traced to a few lines here (and checked by hand in the tests).
"""
import numpy as np
import pandas as pd


def align(predictions: pd.Series, truth: pd.Series, truth_name: str):
    """The samples that have both a prediction and a (non-missing) true value.

    Returns (predictions, truth, note) in the order of `predictions`; `note` says
    what was left out, or is None when every sample matched.
    """
    truth = truth.dropna()
    shared = predictions.index[predictions.index.isin(truth.index)]
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
    Pearson r; R^2 and r are NaN where undefined (constant values)."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    error = predicted - true
    total = ((true - true.mean()) ** 2).sum()
    return {"N": len(true),
            "MAE": float(np.abs(error).mean()),
            "RMSE": float(np.sqrt((error ** 2).mean())),
            "R^2": float(1 - (error ** 2).sum() / total) if total > 0 else float("nan"),
            "Pearson r": pearson(true, predicted)}


def pearson(x, y) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


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


def confusion_counts(true: pd.Series, predicted: pd.Series, classes) -> pd.DataFrame:
    """Counts with true classes as rows and predicted classes as columns."""
    position = {label: i for i, label in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (true.map(position).to_numpy(), predicted.map(position).to_numpy()), 1)
    return pd.DataFrame(matrix, index=list(classes), columns=list(classes))


def row_normalized(counts: pd.DataFrame) -> pd.DataFrame:
    """Each row as fractions of its true class (NaN for a class with no samples)."""
    totals = counts.sum(axis=1).replace(0, np.nan)
    return counts.div(totals, axis=0)


def accuracy(counts: pd.DataFrame) -> float:
    return float(np.trace(counts.to_numpy()) / counts.to_numpy().sum())


def baseline_accuracy(counts: pd.DataFrame) -> float:
    """Accuracy of always predicting the most frequent true class."""
    support = counts.sum(axis=1)
    return float(support.max() / support.sum())


def class_report(counts: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support per class.

    As in scikit-learn (zero_division=0), a ratio with nothing to divide by is 0:
    precision of a class never predicted, recall of a class absent from the truth.
    """
    matrix = counts.to_numpy(dtype=float)
    hits = np.diag(matrix)
    precision = _ratio(hits, matrix.sum(axis=0))
    recall = _ratio(hits, matrix.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return pd.DataFrame({"precision": precision, "recall": recall, "F1": f1,
                         "support": matrix.sum(axis=1).astype(int)}, index=counts.index)


def macro_average(report: pd.DataFrame) -> dict:
    """Unweighted means over the classes, each class counting once whatever its size."""
    return {name: float(report[name].mean()) for name in ("precision", "recall", "F1")}


def _ratio(numerator, denominator):
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def roc_curve(is_positive, score):
    """(false positive rates, true positive rates, AUC) of one class against the rest.

    One point per distinct score: tied samples cross the threshold together, so
    ties draw a diagonal segment (worth half) rather than an optimistic step.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    score, is_positive = score[order], is_positive[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    true_positives = np.cumsum(is_positive)[last_of_each_score]
    false_positives = last_of_each_score + 1 - true_positives
    tpr = np.r_[0.0, true_positives / true_positives[-1]]
    fpr = np.r_[0.0, false_positives / false_positives[-1]]
    return fpr, tpr, float(np.trapz(tpr, fpr))


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
