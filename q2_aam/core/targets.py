"""Targets as a supervised model learns them, and its outputs as answers.

A TargetCodec holds what turns targets into training values and model outputs
back into predictions: a regressor's scaling (z-scores of the training split)
and, for the 'binned' loss, its bin centers; a classifier's class labels (a
class's code is its position among them). A fitted model keeps it in its info
(`to_info`, `from_info`), so that predictions are decoded as the fit encoded.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

# Bins of the 'binned' regression loss: one per SAMPLES_PER_BIN training
# samples, within [MIN_BINS, MAX_BINS]. Measured: on oral-dev ages (~1500
# samples) 32, 64 and 128 bins gave the same held-out MAE within seed spread; on
# 160 simulated samples 64 bins learned slowly and 8-16 did better.
SAMPLES_PER_BIN, MIN_BINS, MAX_BINS = 20, 8, 64


@dataclass(frozen=True)
class TargetCodec:
    task: str                              # 'regressor' or 'classifier'
    mean: float = 0.0                      # regressor: targets are (value - mean) / std
    std: float = 1.0
    bins: Optional[np.ndarray] = None      # 'binned' regressor: bin centers, original units
    classes: Optional[np.ndarray] = None   # classifier: labels (object array), sorted

    @classmethod
    def from_targets(cls, task, targets, train_idx=None, binned=False):
        """The codec of `targets`: a classifier's classes are every label given; a
        regressor's scaling (and with `binned` its bins) come from the samples
        `train_idx` (default all), so validation samples never shape them."""
        if task == "classifier":
            classes = np.unique(np.asarray(targets, dtype=str))
            return cls(task, classes=np.array([str(c) for c in classes], dtype=object))
        values = np.asarray(targets, dtype=np.float64)
        fitted = values if train_idx is None else values[train_idx]
        mean, std = float(fitted.mean()), float(fitted.std())
        return cls(task, mean=mean, std=std if std > 0 else 1.0,
                   bins=target_bins(fitted) if binned else None)

    @classmethod
    def from_info(cls, task, info):
        """The codec a fitted model's `info` records (see to_info)."""
        if task == "classifier":
            return cls(task, classes=np.array(info["classes"], dtype=object))
        scale = info["target_scaling"]
        bins = np.asarray(info["target_bins"]) if "target_bins" in info else None
        return cls(task, mean=scale["mean"], std=scale["std"], bins=bins)

    def to_info(self):
        if self.task == "classifier":
            return {"classes": [str(c) for c in self.classes]}
        info = {"target_scaling": {"mean": self.mean, "std": self.std}}
        if self.bins is not None:
            info["target_bins"] = [float(c) for c in self.bins]
        return info

    @property
    def n_outputs(self):
        """Outputs of the model's target head: one per class, or per bin, or 1."""
        if self.task == "classifier":
            return len(self.classes)
        return 1 if self.bins is None else len(self.bins)

    def scaled_bins(self):
        """The bin centers in training units (the 'binned' loss's), or None."""
        if self.bins is None:
            return None
        return torch.tensor((self.bins - self.mean) / self.std, dtype=torch.float32)

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
            return raw[:, 0] * self.std + self.mean, None
        probabilities = torch.softmax(torch.from_numpy(raw), dim=-1).numpy()
        return self.classes[probabilities.argmax(1)], probabilities


def binned_median(logits, centers):
    """Median of each row's predicted distribution over the bin `centers`.

    The CDF is piecewise linear through the centers, each center's mass split
    evenly to its two sides, so a distribution all on one center gives exactly
    that center. The median, not the mean: it minimizes absolute error, and
    when the model hesitates between two distant ages (two studies, say) it
    picks the likelier side instead of an age between them.
    """
    p = torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), -1).numpy()
    cdf = np.cumsum(p, 1) - p / 2
    upper = np.clip((cdf < 0.5).sum(1), 1, len(centers) - 1)
    rows = np.arange(len(p))
    low, high = cdf[rows, upper - 1], cdf[rows, upper]
    share = np.clip((0.5 - low) / np.maximum(high - low, 1e-300), 0, 1)
    return centers[upper - 1] + share * (centers[upper] - centers[upper - 1])


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


__all__ = ["TargetCodec", "binned_median", "target_bins", "SAMPLES_PER_BIN", "MIN_BINS",
           "MAX_BINS"]
