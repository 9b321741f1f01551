"""Figures for the visualizers, each saved as PNG and SVG.

matplotlib is imported inside the functions: every `qiime` command imports every
plugin. Figures are built as bare `Figure` objects on an Agg canvas, never through
pyplot, so nothing depends on (or leaks into) a global figure manager or display.
"""
import os

import numpy as np

TRAIN_COLOR, VALIDATION_COLOR, BEST_COLOR = "#1f77b4", "#ff7f0e", "#555555"
MAX_LABEL_LENGTH = 24
# Beyond this many points a scatter is drawn as pixels inside the SVG, which keeps
# the SVG small and quick to open.
MAX_VECTOR_POINTS = 5000


def new_figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure, output_dir, stem):
    """Write stem.png and stem.svg into output_dir."""
    for extension in ("png", "svg"):
        figure.savefig(os.path.join(output_dir, f"{stem}.{extension}"), dpi=110)


def plain(text, max_length=None):
    """A user string as literal figure text: '$' would otherwise start mathtext
    (and an unbalanced one raises)."""
    text = str(text)
    if max_length and len(text) > max_length:
        text = text[:max_length - 1] + "\u2026"
    return text.replace("$", r"\$")


def scatter(output_dir, stem, true, predicted, line, x_label, y_label, intervals=None):
    """Predicted against true with the least-squares `line` (slope, intercept, or None)
    and the dashed 1:1 line; with `intervals` (lower, upper, legend label), each
    sample's interval as a vertical bar at its true value (NaN bounds: no bar)."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    figure = new_figure(6, 6)
    axes = figure.add_subplot()
    extent = [true, predicted]
    if intervals is not None:
        lower, upper, label = intervals
        drawn = np.isfinite(lower) & np.isfinite(upper)
        axes.vlines(true[drawn], lower[drawn], upper[drawn], color=TRAIN_COLOR, alpha=0.45,
                    linewidth=1, label=label, rasterized=len(true) > MAX_VECTOR_POINTS)
        extent += [lower[drawn], upper[drawn]]
    axes.scatter(true, predicted, s=20 if len(true) < 2000 else 4, alpha=0.7,
                 color=TRAIN_COLOR, edgecolors="none", label="samples",
                 rasterized=len(true) > MAX_VECTOR_POINTS)
    low, high = _common_range(*(values for values in extent if len(values)))
    axes.plot([low, high], [low, high], linestyle="--", color=BEST_COLOR, label="1:1")
    if line is not None:
        slope, intercept = line
        axes.plot([low, high], [slope * low + intercept, slope * high + intercept],
                  color=VALIDATION_COLOR, label="least-squares fit")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.set_xlabel(plain(x_label))
    axes.set_ylabel(plain(y_label))
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    save(figure, output_dir, stem)


def _common_range(*values):
    low = min(float(np.min(v)) for v in values)
    high = max(float(np.max(v)) for v in values)
    margin = 0.05 * (high - low) or 0.5
    return low - margin, high + margin


def confusion_heatmaps(output_dir, stem, counts, fractions):
    """Counts and row-normalized fractions side by side, true classes as rows."""
    n = len(counts)
    side = min(max(3.5, 0.55 * n + 1.5), 14)
    figure = new_figure(2 * side + 1, side)
    left, right = figure.subplots(1, 2)
    _heatmap(figure, left, counts.to_numpy(), counts, "Counts", "{:d}", vmax=None)
    _heatmap(figure, right, fractions.to_numpy(), counts, "Fraction of true class",
             "{:.2f}", vmax=1.0)
    save(figure, output_dir, stem)


def _heatmap(figure, axes, values, counts, title, number_format, vmax):
    image = axes.imshow(np.nan_to_num(values, nan=0.0), cmap="Blues", vmin=0, vmax=vmax)
    figure.colorbar(image, ax=axes, shrink=0.8)
    labels = [plain(label, MAX_LABEL_LENGTH) for label in counts.index]
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(title)
    if len(labels) <= 20:   # beyond that the numbers are unreadable; the table has them
        threshold = np.nanmax(values) / 2 if np.isfinite(np.nanmax(values)) else 0
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                axes.text(column, row, number_format.format(value), ha="center",
                          va="center", fontsize=8,
                          color="white" if value > threshold else "black")


def roc_curves(output_dir, stem, curves):
    """One ROC curve per class, {label: (fpr, tpr, auc)}, and the chance diagonal."""
    figure = new_figure(6.5, 6)
    axes = figure.add_subplot()
    for label, (fpr, tpr, auc) in curves.items():
        axes.plot(fpr, tpr, label=f"{plain(label, MAX_LABEL_LENGTH)} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color=BEST_COLOR, label="chance")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.set_title("One-vs-rest ROC curves")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    save(figure, output_dir, stem)


def learning_curves(output_dir, stem, history, panels, best_epochs):
    """One panel per name in `panels`: train/<name> and val/<name> overlaid (whichever
    exist; 'learning_rate' is a plain column), with the best epoch marked. An
    ensemble's history (a 'member' column) draws each member's curves, and
    `best_epochs` holds one best epoch per member."""
    from matplotlib.ticker import MaxNLocator
    columns = 3 if len(panels) > 4 else 2
    rows = max(1, -(-len(panels) // columns))
    figure = new_figure(4.2 * columns, 3.2 * rows)
    if not panels:
        figure.text(0.5, 0.5, "No training history was recorded.", ha="center")
    members = ([history] if "member" not in history
               else [part for _, part in history.groupby("member")])
    alpha = 1.0 if len(members) == 1 else 0.6
    for i, name in enumerate(panels):
        axes = figure.add_subplot(rows, columns, i + 1)
        for k, part in enumerate(members):
            for column, label, color in _series_of(name):
                if column in part:
                    axes.plot(part["epoch"], part[column], marker="o", markersize=3,
                              color=color, alpha=alpha, label=label if k == 0 else None)
        for k, best_epoch in enumerate(best_epochs):
            axes.axvline(best_epoch, color=BEST_COLOR, linestyle=":", label=None if k else (
                f"best epoch ({best_epoch})" if len(best_epochs) == 1 else "members' best epochs"))
        axes.set_title(plain(name.replace("_", " ")))
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Plain numbers: an offset ("1e-6 + 13.14") is unreadable on a nearly flat curve.
        axes.ticklabel_format(axis="y", useOffset=False)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    save(figure, output_dir, stem)


def _series_of(name):
    if name == "learning_rate":
        return [("learning_rate", "learning rate", TRAIN_COLOR)]
    return [(f"train/{name}", "train", TRAIN_COLOR),
            (f"val/{name}", "validation", VALIDATION_COLOR)]


def learning_rate_sweep(output_dir, stem, curve, suggested, lowest):
    """Loss against learning rate (log scale) of a range test: each step's loss, the
    smoothed loss, and the rates at the lowest smoothed loss and suggested."""
    figure = new_figure(7.5, 4.8)
    axes = figure.add_subplot()
    rates = curve["learning_rate"].to_numpy()
    axes.plot(rates, curve["loss"], color=TRAIN_COLOR, alpha=0.25, linewidth=1,
              label="loss of each step")
    axes.plot(rates, curve["smoothed_loss"], color=TRAIN_COLOR, linewidth=2,
              label="smoothed loss")
    axes.axvline(lowest, color=BEST_COLOR, linestyle=":",
                 label=f"lowest smoothed loss ({lowest:.2g})")
    axes.axvline(suggested, color=VALIDATION_COLOR, linestyle="--", linewidth=2,
                 label=f"suggested learning rate ({suggested:.2g})")
    axes.set_xscale("log")
    # The smoothed curve sets the range: a single exploding step would flatten the rest.
    low = min(curve["loss"].min(), curve["smoothed_loss"].min())
    high = curve["smoothed_loss"].max()
    margin = 0.05 * (high - low) or 0.5
    axes.set_ylim(low - margin, high + margin)
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save(figure, output_dir, stem)
