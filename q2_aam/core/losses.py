"""Loss terms. Each returns a scalar tensor; names match the history columns."""
import numpy as np
import torch
import torch.nn.functional as F

from .config import REGRESSION_LOSSES
from .model import predicted_distance


def unifrac_loss(distance_embeddings, true_distances, zero_distance_weight=1.0):
    """MSE between predicted and true distances over the strict upper triangle.

    The diagonal (always 0) and the mirrored lower triangle carry no extra
    signal, so they are left out. Pairs whose true distance is 0 are weighted
    by `zero_distance_weight`.
    """
    pred = predicted_distance(distance_embeddings.float())
    n = pred.shape[0]
    pair = torch.triu(torch.ones(n, n, dtype=torch.bool, device=pred.device), diagonal=1)
    weight = torch.where(true_distances == 0, zero_distance_weight, 1.0) * pair
    return ((pred - true_distances) ** 2 * weight).sum() / weight.sum().clamp_min(1e-12)


def nuc_loss(nuc_logits, nuc_targets):
    """Cross-entropy at the masked positions only (0 when none were masked)."""
    if nuc_targets.numel() == 0:
        return nuc_logits.sum() * 0.0
    return F.cross_entropy(nuc_logits.float(), nuc_targets)


def regression_loss(pred, target, kind="mse"):
    """On standardized targets: 'mse', 'huber' (quadratic within one standard
    deviation, linear beyond) or 'l1' (fits the conditional median)."""
    pred = pred.float().squeeze(-1)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "huber":
        return F.huber_loss(pred, target, delta=1.0)
    return F.mse_loss(pred, target)


def binned_regression_loss(logits, target, centers):
    """Cross-entropy of the predicted distribution over bin `centers` (sorted,
    standardized units) against a two-hot label: each target's mass is split
    between the two centers around it so that their weighted mean is the target
    (targets beyond the outer centers go to those)."""
    target = target.float().clamp(centers[0], centers[-1])
    upper = torch.searchsorted(centers, target).clamp(1, len(centers) - 1)
    lower = upper - 1
    share = ((target - centers[lower]) / (centers[upper] - centers[lower])).clamp(0, 1)
    label = torch.zeros(len(target), len(centers), device=logits.device)
    label.scatter_(1, lower[:, None], (1 - share)[:, None])
    label.scatter_add_(1, upper[:, None], share[:, None])
    return F.cross_entropy(logits.float(), label)


def quantile_regression_loss(pred, target, levels):
    """Pinball loss of predicted quantiles [B, Q] at `levels` [Q] against
    standardized targets [B], averaged over samples and levels: each output
    learns its level's conditional quantile."""
    residual = target.float()[:, None] - pred.float()
    return torch.maximum(levels * residual, (levels - 1) * residual).mean()


def classification_loss(logits, target, class_weights=None):
    return F.cross_entropy(logits.float(), target, weight=class_weights)


def resolve_regression_loss(kind, pretrained):
    """'auto' -> 'l1' on a pretrained encoder, 'mse' from scratch; others unchanged.

    Measured (BENCHMARKS.md): on a pretrained encoder 'l1' gave a clearly lower
    held-out MAE than 'mse' on oral-dev ages; from scratch 'l1' sat at the
    median for tens of epochs, where 'mse' learned.
    """
    if kind != "auto":
        return kind
    return "l1" if pretrained else "mse"


class LossFunction:
    """Combines the loss terms a task uses, weighted by their penalties."""

    @classmethod
    def for_run(cls, task, cfg, class_weights=None, bin_centers=None, quantile_levels=None):
        """The loss of `task` with the penalties and choices of the TrainConfig `cfg`
        (its regression_loss already resolved: see resolve_regression_loss)."""
        return cls(task, nuc_penalty=cfg.nuc_penalty, unifrac_penalty=cfg.unifrac_penalty,
                   faith_pd_penalty=cfg.faith_pd_penalty,
                   zero_distance_weight=cfg.zero_distance_weight, class_weights=class_weights,
                   regression_loss=cfg.regression_loss, bin_centers=bin_centers,
                   quantile_levels=quantile_levels)

    def __init__(self, task, nuc_penalty=1.0, unifrac_penalty=1.0, faith_pd_penalty=1.0,
                 target_penalty=1.0, zero_distance_weight=1.0, class_weights=None,
                 regression_loss="mse", bin_centers=None, quantile_levels=None):
        if not zero_distance_weight >= 0:
            raise ValueError("zero_distance_weight must be non-negative (0 leaves zero-distance "
                             f"pairs out of the UniFrac loss); got {zero_distance_weight!r}.")
        if task == "regressor" and regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"Unknown regression loss {regression_loss!r}; resolve 'auto' "
                             "with resolve_regression_loss first.")
        if task == "regressor" and (regression_loss == "binned") != (bin_centers is not None):
            raise ValueError("The 'binned' regression loss needs bin_centers, and bin_centers "
                             "go with the 'binned' loss only.")
        if task == "regressor" and (regression_loss == "quantile") != (quantile_levels is not None):
            raise ValueError("The 'quantile' regression loss needs quantile_levels, and "
                             "quantile_levels go with the 'quantile' loss only.")
        self.task = task
        self.penalties = {"unifrac_loss": unifrac_penalty, "nuc_loss": nuc_penalty,
                          "faith_pd_loss": faith_pd_penalty, "target_loss": target_penalty}
        self.zero_distance_weight = zero_distance_weight
        self.class_weights = class_weights
        self.regression_loss = regression_loss
        self.bin_centers = bin_centers      # the 'binned' regression loss's, standardized
        self.quantile_levels = quantile_levels      # the 'quantile' regression loss's

    def sample_weights(self, batch):
        """[B] numpy weight of each sample in the target loss's mean (its class
        weight in a weighted classification, else 1); data-parallel training
        shares the term between ranks by these (distributed.shard_batch)."""
        if self.task == "classifier" and self.class_weights is not None \
                and batch.targets is not None:
            return self.class_weights.cpu().numpy()[batch.targets.cpu().numpy()]
        return np.ones(batch.size)

    def __call__(self, out, batch):
        losses = {}
        if batch.distances is not None and self.penalties["unifrac_loss"] > 0:
            losses["unifrac_loss"] = unifrac_loss(out["distance_embeddings"], batch.distances,
                                                  self.zero_distance_weight)
        if "nuc_logits" in out and self.penalties["nuc_loss"] > 0:
            losses["nuc_loss"] = nuc_loss(out["nuc_logits"], batch.nuc_targets)
        if "faith_pd" in out and batch.faith_pd is not None:
            losses["faith_pd_loss"] = F.mse_loss(out["faith_pd"].float(), batch.faith_pd)
        if "target" in out and batch.targets is not None:
            if self.task == "regressor" and self.bin_centers is not None:
                losses["target_loss"] = binned_regression_loss(
                    out["target"], batch.targets, self.bin_centers.to(out["target"].device))
            elif self.task == "regressor" and self.quantile_levels is not None:
                losses["target_loss"] = quantile_regression_loss(
                    out["target"], batch.targets, self.quantile_levels.to(out["target"].device))
            elif self.task == "regressor":
                losses["target_loss"] = regression_loss(out["target"], batch.targets,
                                                          self.regression_loss)
            else:
                weights = (None if self.class_weights is None
                           else self.class_weights.to(out["target"].device))
                losses["target_loss"] = classification_loss(out["target"], batch.targets, weights)
        losses["loss"] = sum(self.penalties[k] * v for k, v in losses.items())
        return losses
