"""Accuracy metrics: the one implementation behind a fit's validation metrics and
the visualizers' numbers.

Every number is computed by sklearn.metrics (Pearson r by scipy.stats); this module
only fixes the choices those functions leave open, so that a fit's history and a
visualization of the same predictions show the same numbers:

* Undefined is NaN, not a stand-in value: R^2 when the true values are constant
  (sklearn's r2_score would say 1.0 or 0.0), Pearson r when either side is constant.
* The classes counted are those among the true or the predicted labels of the
  samples compared (sklearn's default, and what q2-sample-classifier's reports
  count), so a class the model predicts but that is never true counts in every macro
  average, as it has a column in the confusion matrix: its precision is 0 (each of
  its predictions is wrong), its recall 0/0, so its F1 is 0. A class that is neither
  true nor predicted is not counted: there is nothing to measure.
* zero_division=0: a ratio with nothing to divide by is 0 (precision of a class
  never predicted, recall of a class never true), as in sklearn's
  classification_report.
"""
import numpy as np
import pandas as pd
import scipy.stats
from sklearn import metrics as skm
from sklearn.utils.multiclass import unique_labels

ZERO_DIVISION = 0

# --- regression -----------------------------------------------------------------------


def regression_metrics(true, predicted) -> dict:
    """'mae', 'rmse' and 'r2' of `predicted` against `true` values."""
    true, predicted = _floats(true), _floats(predicted)
    return {"mae": float(skm.mean_absolute_error(true, predicted)),
            # sqrt of the MSE: `squared=False` is gone from newer scikit-learn
            "rmse": float(np.sqrt(skm.mean_squared_error(true, predicted))),
            "r2": r2(true, predicted)}


def r2(true, predicted) -> float:
    """Coefficient of determination of `predicted` for `true`; NaN for constant truth."""
    true, predicted = _floats(true), _floats(predicted)
    if len(np.unique(true)) < 2:
        return float("nan")
    return float(skm.r2_score(true, predicted))


def pearson_r(x, y) -> float:
    """Linear correlation of x and y; NaN when either is constant (or has < 2 values)."""
    x, y = _floats(x), _floats(y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy.stats.pearsonr(x, y)[0])


def _floats(values):
    return np.asarray(values, dtype=np.float64)


# --- classification -------------------------------------------------------------------


def classification_metrics(true, predicted) -> dict:
    """'accuracy' and 'macro_f1' of predicted against true labels (or class codes)."""
    return {"accuracy": accuracy(true, predicted),
            "macro_f1": macro_average(true, predicted)["F1"]}


def compared_classes(true, predicted) -> list:
    """The classes the metrics count: those among the true or the predicted labels."""
    # tolist: plain Python labels (numpy 2 would print np.str_('a') in messages)
    return unique_labels(np.asarray(true), np.asarray(predicted)).tolist()


def accuracy(true, predicted) -> float:
    return float(skm.accuracy_score(np.asarray(true), np.asarray(predicted)))


def macro_average(true, predicted) -> dict:
    """Unweighted means of per-class 'precision', 'recall' and 'F1' over the compared
    classes, each class counting once whatever its size."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        true, predicted, labels=compared_classes(true, predicted), average="macro",
        zero_division=ZERO_DIVISION)
    return {"precision": float(precision), "recall": float(recall), "F1": float(f1)}


def class_report(true, predicted, classes=None) -> pd.DataFrame:
    """'precision', 'recall', 'F1' and 'support' (true samples) per class, indexed by
    class. `classes` orders the rows; it must hold exactly the compared classes."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    classes = _checked_classes(true, predicted, classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        true, predicted, labels=classes, zero_division=ZERO_DIVISION)
    return pd.DataFrame({"precision": precision, "recall": recall, "F1": f1,
                         "support": support.astype(int)}, index=list(classes))


def confusion_counts(true, predicted, classes=None) -> pd.DataFrame:
    """Sample counts with true classes as rows and predicted classes as columns.
    `classes` orders both; it must hold exactly the compared classes."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    classes = _checked_classes(true, predicted, classes)
    counts = skm.confusion_matrix(true, predicted, labels=classes)
    return pd.DataFrame(counts, index=list(classes), columns=list(classes))


def _checked_classes(true, predicted, classes):
    compared = compared_classes(true, predicted)
    if classes is None:
        return compared
    classes = list(classes)
    if len(set(classes)) != len(classes) or set(classes) != set(compared):
        raise ValueError(
            f"The classes given ({classes!r}) must be the classes among the true and "
            f"predicted labels, each once ({compared!r}); only their order is yours.")
    return classes


def roc_curve(is_positive, score):
    """(false positive rates, true positive rates, AUC) of one class against the rest.

    One point per distinct score: tied samples cross the threshold together, so
    ties draw a diagonal segment (worth half) rather than an optimistic step.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        side = "positive" if is_positive.any() else "negative"
        raise ValueError(f"A ROC curve needs positive and negative samples; all "
                         f"{len(is_positive)} are {side}.")
    fpr, tpr, _ = skm.roc_curve(is_positive, _floats(score), drop_intermediate=False)
    return fpr, tpr, float(skm.auc(fpr, tpr))
