"""Targets as a supervised model learns them, and its outputs as answers.

A TargetCodec holds what turns targets into training values and model outputs
back into predictions: a regressor's scaling (z-scores of the training split)
and, for the 'binned' loss, its bin centers, for the 'quantile' loss, the
quantile levels it predicts; a classifier's class labels (a class's code is its
position among them). A regressor of either of those two losses predicts a
distribution, and so also prediction intervals (TargetCodec.intervals),
recalibrated on the validation split where the fit recorded one
(interval_calibration). A fitted model keeps it in its info
(`to_info`, `from_info`), so that predictions are decoded as the fit encoded.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .config import CALIBRATION_POINTS

# Bins of the 'binned' regression loss: one per SAMPLES_PER_BIN training
# samples, within [MIN_BINS, MAX_BINS]. Measured: on oral-dev ages (~1500
# samples) 32, 64 and 128 bins gave the same held-out MAE within seed spread; on
# 160 simulated samples 64 bins learned slowly and 8-16 did better.
SAMPLES_PER_BIN, MIN_BINS, MAX_BINS = 20, 8, 64
# Quantile levels of the 'quantile' regression loss (pinball loss, one output
# each): the median answers, and pairs around it bound the central 50%, 80%,
# 90% and 95% intervals exactly; other levels are interpolated between them.
QUANTILE_LEVELS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975)
# The interval calibration is kept as its map at these probabilities.
CALIBRATION_GRID = np.linspace(0, 1, CALIBRATION_POINTS)
# validation.tsv's column of a binned or quantile regressor: the predicted CDF at
# each validation sample's true value, from which the calibration comes.
CDF_AT_TRUE = "cdf_at_true"


@dataclass(frozen=True)
class TargetCodec:
    task: str                              # 'regressor' or 'classifier'
    mean: float = 0.0                      # regressor: targets are (value - mean) / std
    std: float = 1.0
    bins: Optional[np.ndarray] = None      # 'binned' regressor: bin centers, original units
    classes: Optional[np.ndarray] = None   # classifier: labels (object array), sorted
    quantile_levels: Optional[np.ndarray] = None   # 'quantile' regressor: levels, increasing
    # Binned or quantile regressor: its calibration map at CALIBRATION_GRID, or None.
    calibration: Optional[np.ndarray] = None

    @classmethod
    def from_targets(cls, task, targets, train_idx=None, binned=False, quantiles=False):
        """The codec of `targets`: a classifier's classes are every label given; a
        regressor's scaling (and with `binned` its bins) come from the samples
        `train_idx` (default all), so validation samples never shape them. With
        `quantiles` the regressor predicts QUANTILE_LEVELS."""
        if task == "classifier":
            classes = np.unique(np.asarray(targets, dtype=str))
            return cls(task, classes=np.array([str(c) for c in classes], dtype=object))
        values = np.asarray(targets, dtype=np.float64)
        fitted = values if train_idx is None else values[train_idx]
        mean, std = float(fitted.mean()), float(fitted.std())
        return cls(task, mean=mean, std=std if std > 0 else 1.0,
                   bins=target_bins(fitted) if binned else None,
                   quantile_levels=np.array(QUANTILE_LEVELS) if quantiles else None)

    @classmethod
    def from_info(cls, task, info):
        """The codec a fitted model's `info` records (see to_info)."""
        if task == "classifier":
            return cls(task, classes=np.array(info["classes"], dtype=object))
        scale = info["target_scaling"]
        bins = np.asarray(info["target_bins"]) if "target_bins" in info else None
        levels = info.get("target_quantile_levels")
        calibration = info.get("interval_calibration")
        return cls(task, mean=scale["mean"], std=scale["std"], bins=bins,
                   quantile_levels=None if levels is None else np.asarray(levels, np.float64),
                   calibration=None if calibration is None
                   else np.asarray(calibration["probabilities"], np.float64))

    def to_info(self):
        if self.task == "classifier":
            return {"classes": [str(c) for c in self.classes]}
        info = {"target_scaling": {"mean": self.mean, "std": self.std}}
        if self.bins is not None:
            info["target_bins"] = [float(c) for c in self.bins]
        if self.quantile_levels is not None:
            info["target_quantile_levels"] = [float(q) for q in self.quantile_levels]
        return info

    @property
    def n_outputs(self):
        """Outputs of the model's target head: one per class, per bin, per
        quantile level, or 1."""
        if self.task == "classifier":
            return len(self.classes)
        if self.quantile_levels is not None:
            return len(self.quantile_levels)
        return 1 if self.bins is None else len(self.bins)

    @property
    def predicts_distribution(self):
        """Whether the regressor's outputs describe a distribution (bins or
        quantiles), from which prediction intervals come."""
        return self.bins is not None or self.quantile_levels is not None

    def scaled_bins(self):
        """The bin centers in training units (the 'binned' loss's), or None."""
        if self.bins is None:
            return None
        return torch.tensor((self.bins - self.mean) / self.std, dtype=torch.float32)

    def quantile_tensor(self):
        """The quantile levels as the 'quantile' loss takes them, or None."""
        if self.quantile_levels is None:
            return None
        return torch.tensor(self.quantile_levels, dtype=torch.float32)

    def encode(self, targets):
        """Training values: class codes (int64) or z-scores (float32)."""
        if self.task == "classifier":
            labels = np.asarray(targets, dtype=str)
            codes = np.searchsorted(self.classes.astype(str), labels)
            known = codes < len(self.classes)
            known[known] = self.classes[codes[known]] == labels[known]
            if not known.all():
                raise ValueError(f"Label(s) {sorted(set(labels[~known]))[:5]} are not among "
                                 f"the model's classes {list(self.classes)}.")
            return codes.astype(np.int64)
        values = np.asarray(targets, dtype=np.float64)
        return ((values - self.mean) / self.std).astype(np.float32)

    def decode_targets(self, encoded):
        """Training values back in original units or labels (encode's inverse)."""
        if self.task == "classifier":
            return self.classes[encoded]
        return encoded * self.std + self.mean

    def decode(self, raw):
        """The target head's outputs [n, n_outputs] -> (predictions in original
        units or labels, class probabilities or None)."""
        if self.task == "regressor":
            if self.bins is not None:
                return binned_median(raw, self.bins), None
            if self.quantile_levels is not None:
                return quantile_at(self.quantiles(raw), self.quantile_levels, 0.5), None
            return raw[:, 0] * self.std + self.mean, None
        probabilities = torch.softmax(torch.from_numpy(raw), dim=-1).numpy()
        return self.classes[probabilities.argmax(1)], probabilities

    def quantiles(self, raw):
        """A 'quantile' regressor's outputs [n, levels] in original units, each
        row sorted: quantiles fitted separately may cross, and sorting them (the
        monotone rearrangement) makes each row a quantile function again."""
        return np.sort(np.asarray(raw, dtype=np.float64), axis=1) * self.std + self.mean

    def intervals(self, raw, level):
        """(lower, upper) bounds in original units of each row's central `level`
        interval: its (1 - level) / 2 and (1 + level) / 2 quantiles, each
        probability first mapped through the calibration (when there is one),
        from the predicted distribution: the bins' piecewise-linear CDF (as the
        binned median) or the predicted quantiles, interpolated linearly."""
        self.check_level(level)
        low, high = (1 - level) / 2, (1 + level) / 2
        if self.calibration is not None:
            low, high = np.interp([low, high], CALIBRATION_GRID, self.calibration)
        return self.quantile_function(raw, low), self.quantile_function(raw, high)

    def check_level(self, level):
        """ValueError unless this regressor's intervals can reach `level`."""
        if not 0 < level < 1:
            raise ValueError(f"An interval's level is a probability strictly between 0 and 1; "
                             f"got {level!r}.")
        if self.quantile_levels is not None:
            levels = self.quantile_levels
            if level > levels[-1] - levels[0] + 1e-12:
                raise ValueError(
                    f"This regressor predicts the quantiles {levels[0]:g} to {levels[-1]:g} of "
                    f"its target, so its intervals reach a level of at most "
                    f"{levels[-1] - levels[0]:g}; got {level:g}. Choose a lower level.")

    def quantile_function(self, raw, q):
        """Each row's predicted `q` quantile in original units (cdf's inverse).
        A 'quantile' regressor's beyond its outer levels is extrapolated linearly."""
        if self.bins is not None:
            return binned_quantile(raw, self.bins, q)
        if self.quantile_levels is not None:
            return quantile_at(self.quantiles(raw), self.quantile_levels, q)
        raise ValueError("Prediction intervals need a regressor that predicts a distribution "
                         "(regression_loss 'binned' or 'quantile'); this one predicts a single "
                         "value.")

    def cdf(self, raw, values):
        """Each row's predicted CDF at its value of `values` (original units)."""
        values = np.asarray(values, dtype=np.float64)
        if self.bins is not None:
            return binned_cdf(raw, self.bins, values)
        return quantile_cdf(self.quantiles(raw), self.quantile_levels, values)


def binned_median(logits, centers):
    """Median of each row's predicted distribution over the bin `centers`
    (binned_quantile at 0.5). The median, not the mean: it minimizes absolute
    error, and when the model hesitates between two distant ages (two studies,
    say) it picks the likelier side instead of an age between them.
    """
    return binned_quantile(logits, centers, 0.5)


def binned_quantile(logits, centers, q):
    """The `q` quantile of each row's predicted distribution over the bin `centers`.

    The CDF is piecewise linear through the centers, each center's mass split
    evenly to its two sides, so a distribution all on one center gives exactly
    that center; quantiles beyond the outer half-masses are the outer centers.
    """
    p = torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), -1).numpy()
    cdf = np.cumsum(p, 1) - p / 2
    upper = np.clip((cdf < q).sum(1), 1, len(centers) - 1)
    rows = np.arange(len(p))
    low, high = cdf[rows, upper - 1], cdf[rows, upper]
    share = np.clip((q - low) / np.maximum(high - low, 1e-300), 0, 1)
    return centers[upper - 1] + share * (centers[upper] - centers[upper - 1])


def binned_cdf(logits, centers, values):
    """Each row's CDF at its value of `values`: binned_quantile's inverse (0
    below the first center, 1 above the last)."""
    p = torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), -1).numpy()
    cdf = np.cumsum(p, 1) - p / 2
    upper = np.clip(np.searchsorted(centers, values), 1, len(centers) - 1)
    rows = np.arange(len(p))
    share = np.clip((values - centers[upper - 1]) / (centers[upper] - centers[upper - 1]), 0, 1)
    inside = cdf[rows, upper - 1] + share * (cdf[rows, upper] - cdf[rows, upper - 1])
    return np.where(values < centers[0], 0.0, np.where(values > centers[-1], 1.0, inside))


def quantile_at(values, levels, q):
    """The `q` quantile of each row of `values` [n, len(levels)] (sorted
    quantiles at increasing `levels`), interpolated linearly between levels and
    extrapolated linearly beyond the outer ones."""
    upper = int(np.clip(np.searchsorted(levels, q), 1, len(levels) - 1))
    share = (q - levels[upper - 1]) / (levels[upper] - levels[upper - 1])
    return values[:, upper - 1] + share * (values[:, upper] - values[:, upper - 1])


def quantile_cdf(values, levels, y):
    """Each row's CDF at its value of `y`: quantile_at's inverse (linear beyond
    the outer levels too), within [0, 1]. Where quantiles tie the CDF jumps, and
    a value at the tie gets the middle of the jump."""
    rows = np.arange(len(values))
    upper = np.clip((values < y[:, None]).sum(1), 1, values.shape[1] - 1)
    left, right = values[rows, upper - 1], values[rows, upper]
    width = right - left
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(width > 0, (y - left) / np.where(width > 0, width, 1.0),
                         np.where(y < left, -np.inf, np.where(y > right, np.inf, 0.5)))
    low, high = levels[upper - 1], levels[upper]
    return np.clip(low + share * (high - low), 0.0, 1.0)


def interval_calibration(validation_cdf):
    """The calibration of prediction intervals from held-out samples' predicted
    CDF at their true values (their probability integral transform, uniform
    when the predicted distributions are calibrated; Kuleshov et al. 2018): the
    map from a nominal probability q to the probability whose quantile holds a
    share q of held-out values, i.e. the q quantile of those CDF values, kept
    at CALIBRATION_GRID. The i-th smallest of n values stands at i / (n + 1),
    with 0 at 0 and 1 at 1, so that few samples calibrate cautiously (as a
    split-conformal rank does). None without held-out values."""
    u = np.asarray(validation_cdf, dtype=np.float64)
    u = np.sort(np.clip(u[np.isfinite(u)], 0.0, 1.0))
    if len(u) == 0:
        return None
    positions = np.arange(1, len(u) + 1) / (len(u) + 1)
    return np.interp(CALIBRATION_GRID, np.concatenate([[0.0], positions, [1.0]]),
                     np.concatenate([[0.0], u, [1.0]]))


def calibration_info(validation_cdf):
    """What a fitted model's info["interval_calibration"] holds: the map
    (interval_calibration) at CALIBRATION_GRID and the number of held-out
    samples behind it; None without any."""
    calibration = interval_calibration(validation_cdf)
    if calibration is None:
        return None
    return {"probabilities": [round(float(p), 6) for p in calibration],
            "validation_samples": int(np.isfinite(np.asarray(validation_cdf, float)).sum())}


def target_bins(values):
    """Bin centers of the 'binned' regression loss: quantiles of the training
    targets (their number set by the sample count), merged where equal.
    Quantiles put narrow bins where targets are dense, so a value many samples
    share gets a center of its own."""
    n_bins = int(np.clip(len(values) // SAMPLES_PER_BIN, MIN_BINS, MAX_BINS))
    centers = np.unique(np.quantile(values, np.linspace(0, 1, n_bins)))
    if len(centers) < 2:
        raise ValueError("The 'binned' regression loss needs at least two distinct target "
                         "values in the training split.")
    return centers


__all__ = ["TargetCodec", "binned_median", "binned_quantile", "binned_cdf", "quantile_at",
           "quantile_cdf", "interval_calibration", "calibration_info", "target_bins", "SAMPLES_PER_BIN",
           "MIN_BINS", "MAX_BINS", "QUANTILE_LEVELS", "CALIBRATION_GRID", "CDF_AT_TRUE"]
