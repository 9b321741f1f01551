"""Visualizers: scatterplot, confusion-matrix and summarize.

Pages are rendered with q2templates. Its jinja2 environment does not escape, so
every template wraps its output in `{% autoescape true %}`, and the sections shared
between visualizers (assets/shared/) are rendered here with escaping on and handed
over as Markup. Sample IDs, class labels and column names are user data: they only
ever reach the page through an escaping path (autoescape or pandas' to_html).
"""
import os
import shutil
import zipfile

import numpy as np
import pandas as pd
import qiime2
from markupsafe import Markup

from . import _figures
from . import _metrics
from .core.bundle import ModelBundle
from ._parameters import takes_parameters

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
# Per-sample tables beyond this length stay in the TSV download only.
MAX_TABLE_ROWS = 500
MAX_LISTED_ITEMS = 10
MAX_ANNOTATED_CLASSES = 30
PROBABILITY_PREFIX = "prob:"
# (metric, its name on the page, what it means)
REGRESSION_ROWS = [
    ("N", "N", None),   # what was counted: samples or sample pairs
    ("MAE", "MAE", "mean absolute error"),
    ("RMSE", "RMSE", "root mean squared error"),
    ("R^2", "R\u00b2", "coefficient of determination: 1 is perfect, 0 is no better than "
                      "always predicting the mean"),
    ("Pearson r", "Pearson r", "linear correlation of predicted and true values"),
]


# --- the visualizers ------------------------------------------------------------------


@takes_parameters("scatterplot")
def scatterplot(output_dir: str, predictions: pd.Series,
                truth: qiime2.NumericMetadataColumn, intervals: pd.DataFrame = None,
                **parameters) -> None:
    predicted, true, note = _metrics.align(_numeric(predictions), truth.to_series(),
                                           truth.name, parameters["missing_samples"])
    rows = pd.DataFrame({"sample ID": predicted.index, "true": true.to_numpy(),
                         "predicted": predicted.to_numpy()})
    interval_notes = []
    if intervals is not None:
        rows, interval_notes = with_intervals(rows, intervals)
    section = fit_section(output_dir, rows, "scatter", x_label=f"True {truth.name}",
                          y_label=f"Predicted {truth.name}", what="samples")
    render("comparison", output_dir, page_title="predicted vs true", column=truth.name,
           notes=_present(note, *interval_notes), section=section)


def with_intervals(rows, intervals):
    """`rows` with each sample's interval ('lower', 'upper'; NaN where it has
    none) and whether it holds the true value ('covered'), plus notes on samples
    without one and on mixed levels."""
    bounds = intervals.reindex(rows["sample ID"].astype(str))
    has = bounds["lower"].notna().to_numpy() & bounds["upper"].notna().to_numpy()
    notes = []
    if not has.any():
        return rows, [f"None of the {len(rows)} samples compared has an interval, so no "
                      "interval is drawn and no coverage is reported."]
    if not has.all():
        notes.append(f"{int((~has).sum())} of the {len(rows)} samples compared have no interval: "
                     "they have no bar and are left out of the coverage.")
    levels = np.unique(bounds["level"].to_numpy()[has])
    if len(levels) > 1:
        notes.append(f"The intervals have {len(levels)} different levels "
                     f"({', '.join(map(_number, levels[:5]))}); the coverage pools them.")
    lower, upper = bounds["lower"].to_numpy(), bounds["upper"].to_numpy()
    true = rows["true"].to_numpy()
    covered = pd.array(np.where(has, (lower <= true) & (true <= upper), pd.NA), dtype="boolean")
    return rows.assign(lower=lower, upper=upper, level=bounds["level"].to_numpy(),
                       covered=covered), notes


def interval_coverage(rows):
    """The coverage summary of `rows` with intervals (see with_intervals) for the
    page, or None without intervals: covered count, samples, share, level, and
    the 95% binomial range of the count a calibrated model gives."""
    if "covered" not in rows or rows["covered"].notna().sum() == 0:
        return None
    from scipy.stats import binom
    covered = rows["covered"].dropna().astype(bool)
    level = float(rows.loc[covered.index, "level"].mean())
    low, high = binom.interval(0.95, len(covered), level)
    return {"covered": int(covered.sum()), "n": len(covered),
            "share": f"{covered.mean():.1%}", "level": f"{level:.4g}",
            "level_percent": f"{level:.0%}", "expected_low": int(low),
            "expected_high": int(high)}


@takes_parameters("confusion_matrix")
def confusion_matrix(output_dir: str, predictions: pd.Series,
                     truth: qiime2.CategoricalMetadataColumn,
                     probabilities: pd.DataFrame = None, **parameters) -> None:
    predicted, true, note = _metrics.align(predictions.dropna().astype(str),
                                           truth.to_series(), truth.name,
                                           parameters["missing_samples"])
    section, roc_notes = classification_section(output_dir, true.astype(str), predicted,
                                                probabilities, f"column '{truth.name}'")
    render("comparison", output_dir, page_title="confusion matrix of", column=truth.name,
           notes=_present(note, *roc_notes), section=section)


def summarize(output_dir: str, model: ModelBundle) -> None:
    from .core.bundle import LOOKUP_STRIPPED
    from .core.privacy import stored_references
    history, best = model.history, model.info.get("best_epoch")
    # An ensemble's history has a 'member' column and one best epoch per member.
    best_epochs = [] if best is None else list(best) if isinstance(best, list) else [best]
    members = ([history] if "member" not in history
               else [part.drop(columns="member") for _, part in history.groupby("member")])
    _figures.learning_curves(output_dir, "learning_curves", history, curve_panels(history),
                             best_epochs)
    history.to_csv(os.path.join(output_dir, "history.tsv"), sep="\t", index=False)
    section, notes = best_epoch_section(output_dir, model)
    best_tables = [(f"At epoch {epoch}" if len(members) == 1 else
                    f"Member {k + 1}, at epoch {epoch}", _best_row(part, epoch))
                   for k, (part, epoch) in enumerate(zip(members, best_epochs))]
    stripped = model.info.get(LOOKUP_STRIPPED)
    render("summarize", output_dir, task=model.task, notes=notes, section=section,
            stored_references=stored_references(model),
            stripped_references=None if stripped is None else stripped["references_removed"],
            trained=_training_sentence([len(part) for part in members], best_epochs),
            best_tables=best_tables,
            model_rows=flat_items(model.model_config.to_dict()),
            info_rows=flat_items({k: v for k, v in model.info.items() if k != "best_epoch"}),
            tensorboard=write_event_files(output_dir, model.event_files))


def _training_sentence(epochs_run, best_epochs):
    def plural(n):
        return f"{n} epoch{'s' if n != 1 else ''}"
    if len(epochs_run) == 1:
        kept = (f"; the weights kept are those of the best epoch, epoch {best_epochs[0]}"
                if best_epochs else "")
        return f"Trained for {plural(epochs_run[0])}{kept}."
    return (f"An ensemble of {len(epochs_run)} members, each trained with its own seed and "
            f"validation split, for {', '.join(map(str, epochs_run))} epochs; each keeps the "
            f"weights of its best epoch ({', '.join(map(str, best_epochs))}) and the model "
            "answers with their pooled prediction.")


# --- sections shared by the visualizers -----------------------------------------------


def fit_section(output_dir, rows, stem, x_label, y_label, what):
    """Scatter, accuracy table and per-row table of `rows` (ID columns, then 'true' and
    'predicted'); writes stem.png, stem.svg and stem.tsv."""
    rows = rows.assign(error=rows["predicted"] - rows["true"])
    rows = rows.iloc[np.argsort(-rows["error"].abs().to_numpy(), kind="mergesort")]
    rows.to_csv(os.path.join(output_dir, f"{stem}.tsv"), sep="\t", index=False)
    metrics = _metrics.regression_metrics(rows["true"], rows["predicted"])
    line = _metrics.least_squares_line(rows["true"], rows["predicted"])
    coverage = interval_coverage(rows)
    bars = None if coverage is None else (
        rows["lower"].to_numpy(float), rows["upper"].to_numpy(float),
        f"{coverage['level_percent']} intervals")
    _figures.scatter(output_dir, stem, rows["true"], rows["predicted"], line, x_label,
                     y_label, intervals=bars)
    return _section("fit.html", stem=stem, x_label=x_label, y_label=y_label, what=what,
                    coverage=coverage,
                    metrics=[(shown_as, _number(metrics[key]), meaning or f"{what} compared")
                             for key, shown_as, meaning in REGRESSION_ROWS],
                    line=_line_text(line), table=_table(rows.head(MAX_TABLE_ROWS)),
                    shown=min(len(rows), MAX_TABLE_ROWS), total=len(rows))


def classification_section(output_dir, true, predicted, probabilities, truth_source):
    """Confusion matrix, accuracy, per-class report and, given probabilities, ROC curves.
    Returns (section, notes); ValueError when the truth holds a single class."""
    true_classes = true.unique()
    if len(true_classes) < 2:
        raise ValueError(
            f"The true labels ({truth_source}) hold a single class ({true_classes[0]!r}) among "
            f"the {len(true)} samples compared; a confusion matrix needs at least two.")
    classes = class_order(set(true_classes) | set(predicted.unique()))
    counts = _metrics.confusion_counts(true, predicted, classes)
    fractions = _metrics.row_normalized(counts)
    report = _metrics.class_report(true, predicted, classes)
    _figures.confusion_heatmaps(output_dir, "confusion_matrix", counts, fractions)
    roc, roc_notes = roc_section(output_dir, true, probabilities)
    per_sample = _per_sample_classes(true, predicted, probabilities)
    per_sample.to_csv(os.path.join(output_dir, "per_sample.tsv"), sep="\t", index=False)
    section = _section(
        "classification.html", n=len(true), n_classes=len(classes),
        accuracy=_number(_metrics.accuracy(true, predicted)),
        baseline=_number(_metrics.baseline_accuracy(counts)),
        majority=counts.sum(axis=1).idxmax(),
        macro=[(name, _number(value))
               for name, value in _metrics.macro_average(true, predicted).items()],
        report_table=_table(report.rename_axis("class").reset_index()),
        counts_table=(_counts_table(counts) if len(classes) <= MAX_ANNOTATED_CLASSES
                      else None),
        roc=roc, table=_table(per_sample.head(MAX_TABLE_ROWS)),
        shown=min(len(per_sample), MAX_TABLE_ROWS), total=len(per_sample))
    return section, roc_notes


def roc_section(output_dir, true, probabilities):
    """ROC figure and AUC table as a dict for the template (None without probabilities),
    and notes on what the probabilities lacked."""
    if probabilities is None:
        return None, []
    probabilities = probabilities.copy()
    probabilities.columns = probabilities.columns.astype(str)
    covered = true.index.isin(probabilities.index)
    notes = []
    if not covered.all():
        notes.append(f"{(~covered).sum()} of the {len(true)} samples compared have no "
                     f"probabilities and are left out of the ROC curves.")
    missing = [label for label in class_order(true.unique())
               if label not in probabilities.columns]
    if missing:
        notes.append("The probabilities have no column for the classes "
                     f"{', '.join(repr(label) for label in missing)}: they get no ROC curve.")
    curves = _metrics.one_vs_rest_roc(true[covered], probabilities.loc[true.index[covered]])
    if not curves:
        notes.append("No class has both positive and negative samples with probabilities, "
                      "so no ROC curve can be drawn.")
        return None, notes
    _figures.roc_curves(output_dir, "roc", curves)
    aucs = pd.DataFrame({"class": list(curves), "AUC": [auc for _, _, auc in curves.values()]})
    return {"table": _table(aucs), "macro_auc": _number(aucs["AUC"].mean())}, notes


def best_epoch_section(output_dir, model):
    """The validation predictions of the best epoch, drawn as the task's own plot."""
    validation = model.validation
    if validation is None or len(validation) == 0:
        return None, ["No validation predictions were recorded (validation_fraction was 0 "
                      "or too few samples), so nothing is shown for the best epoch."]
    if model.task == "encoder":
        rows = validation.rename(columns={"sample_a": "sample A", "sample_b": "sample B"})
        return fit_section(output_dir, rows[["sample A", "sample B", "true", "predicted"]],
                           "unifrac", "True UniFrac distance", "Predicted distance",
                           what="validation sample pairs"), []
    ids = validation["sample_id"].astype(str)
    if "member" in validation:     # an ensemble: a sample may be in several members' splits
        ids = ids + " (member " + validation["member"].astype(str) + ")"
    if model.task == "regressor":
        rows = pd.DataFrame({"sample ID": ids, "true": validation["true"],
                             "predicted": validation["predicted"]})
        return fit_section(output_dir, rows, "scatter", "True value", "Predicted value",
                           what="validation samples"), []
    true = pd.Series(validation["true"].astype(str).to_numpy(), index=ids)
    predicted = pd.Series(validation["predicted"].astype(str).to_numpy(), index=ids)
    try:
        return classification_section(output_dir, true, predicted,
                                      _validation_probabilities(validation, ids),
                                      "validation samples")
    except ValueError as error:   # a summary still stands without its confusion matrix
        return None, [str(error)]


# --- helpers --------------------------------------------------------------------------


def curve_panels(history):
    """The learning-curve panels: every train/ or val/ series by name, total loss first,
    then the learning rate."""
    names = []
    for column in history.columns:
        prefix, _, name = column.partition("/")
        if prefix in ("train", "val") and name not in names:
            names.append(name)
    names.sort(key=lambda name: name != "loss")
    return names + (["learning_rate"] if "learning_rate" in history else [])


def class_order(labels):
    """Numeric labels in numeric order ('2' before '10'), any others alphabetically."""
    labels = [str(label) for label in labels]
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def flat_items(mapping, prefix=""):
    """(key, text) rows of a nested dict: nested keys joined by '.', long lists counted."""
    rows = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flat_items(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)) and len(value) > MAX_LISTED_ITEMS:
            rows.append((name, f"{len(value)} items"))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(str(item) for item in value)))
        else:
            rows.append((name, _number(value) if isinstance(value, float) else str(value)))
    return rows


def write_event_files(output_dir, event_files):
    """The TensorBoard event files as tensorboard.zip; its name, or None if there are none."""
    if not event_files:
        return None
    with zipfile.ZipFile(os.path.join(output_dir, "tensorboard.zip"), "w",
                         zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(event_files.items()):
            archive.writestr(os.path.join("tensorboard", name), content)
    return "tensorboard.zip"


def _numeric(predictions):
    numeric = pd.to_numeric(predictions, errors="coerce")
    bad = numeric.isna() & predictions.notna()
    if bad.any():
        raise ValueError(f"{bad.sum()} predictions are not numbers, for example "
                         f"{predictions[bad].iloc[0]!r} for sample {bad.idxmax()!r}.")
    return numeric.dropna()


def _validation_probabilities(validation, ids):
    columns = [c for c in validation.columns if c.startswith(PROBABILITY_PREFIX)]
    if not columns:
        return None
    probabilities = validation[columns].set_axis(ids.to_numpy(), axis=0)
    return probabilities.rename(columns=lambda c: c[len(PROBABILITY_PREFIX):])


def _per_sample_classes(true, predicted, probabilities):
    """One row per sample, misclassified first."""
    rows = pd.DataFrame({"sample ID": true.index, "true": true.to_numpy(),
                         "predicted": predicted.to_numpy()})
    rows["correct"] = rows["true"] == rows["predicted"]
    if probabilities is not None:
        aligned = probabilities.reindex(true.index)
        for label in aligned.columns:
            rows[f"probability of {label}"] = aligned[label].to_numpy()
    return rows.sort_values("correct", kind="mergesort")


def _counts_table(counts):
    labelled = counts.rename_axis(index="true \u2193 / predicted \u2192")
    return _table(labelled.reset_index())


def _best_row(history, best_epoch):
    rows = history[history["epoch"] == best_epoch] if "epoch" in history else history.iloc[:0]
    if rows.empty:
        return []
    return [(name, _number(value)) for name, value in rows.iloc[0].items() if name != "epoch"]


def _line_text(line):
    if line is None:
        return None
    slope, intercept = line
    sign = "\u2212" if intercept < 0 else "+"
    return f"predicted = {_number(slope)} \u00d7 true {sign} {_number(abs(intercept))}"


def _number(value):
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if value is None or not np.isfinite(value):
        return "undefined"
    return f"{value:.4g}"


def _present(*notes):
    return [note for note in notes if note]


def _table(frame):
    # escape=True: pandas escapes every cell and header (sample IDs, labels).
    return Markup(frame.to_html(index=False, escape=True, border=0, na_rep="",
                                float_format=_number,
                                classes="table table-striped table-hover table-condensed"))


def _section(template, **context):
    import jinja2
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(ASSETS, "shared")),
        autoescape=True, undefined=jinja2.StrictUndefined)
    return Markup(environment.get_template(template).render(**context))


def render(visualizer, output_dir, **context):
    import q2templates
    shutil.copy(os.path.join(ASSETS, "shared", "aam.css"), output_dir)
    q2templates.render(os.path.join(ASSETS, visualizer, "index.html"), output_dir,
                       context=context)
