"""Supervised fits (regression, classification) and prediction from a ModelBundle."""
import numpy as np
import pandas as pd
import torch

from .bundle import ModelBundle
from .config import ModelConfig, TrainConfig
from .data import split_indices
from .losses import LossFunction
from .model import AAMModel
from .train import predict_outputs, resolve_device, train


def regression_metrics(true, predicted):
    error = predicted - true
    total = ((true - true.mean()) ** 2).sum()
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean())),
            "r2": float(1 - (error ** 2).sum() / total) if total > 0 else float("nan")}


def classification_metrics(true, predicted, n_classes):
    f1s = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (true == c))
        precision = tp / max(1, np.sum(predicted == c))
        recall = tp / max(1, np.sum(true == c))
        if np.any(true == c):
            f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float(np.mean(true == predicted)), "macro_f1": float(np.mean(f1s))}


def decode(task, info, outputs):
    """Model outputs -> (predictions in original units or labels, probabilities or None).

    `info` is the model's task information (target scaling or class labels).
    """
    raw = outputs["target"]
    if task == "regressor":
        scale = info["target_scaling"]
        return raw[:, 0] * scale["std"] + scale["mean"], None
    logits = torch.from_numpy(raw)
    probabilities = torch.softmax(logits, dim=-1).numpy()
    labels = np.array(info["classes"], dtype=object)
    return labels[probabilities.argmax(1)], probabilities


def evaluate_targets(bundle_info, task, batch_size):
    """Validation predictions in original units, with task metrics."""
    def evaluate(model, data, indices, device):
        out = predict_outputs(model, data, indices, batch_size, device)
        ids = np.array(data.sample_ids)[indices]
        predicted, probabilities = decode(task, bundle_info, out)
        if task == "regressor":
            scale = bundle_info["target_scaling"]
            true = data.targets[indices] * scale["std"] + scale["mean"]
            detail = pd.DataFrame({"sample_id": ids, "true": true, "predicted": predicted})
            return regression_metrics(true, predicted), detail
        classes = np.array(bundle_info["classes"], dtype=object)
        true_codes = data.targets[indices]
        detail = pd.DataFrame({"sample_id": ids, "true": classes[true_codes],
                               "predicted": predicted})
        for c, label in enumerate(classes):
            detail[f"prob:{label}"] = probabilities[:, c]
        metrics = classification_metrics(true_codes, probabilities.argmax(1), len(classes))
        return metrics, detail
    return evaluate


def fit(data, targets, task, model_cfg: ModelConfig, train_cfg: TrainConfig, encoder=None,
        freeze_encoder=False, class_weights="none", zero_distance_weight=1.0, log=None):
    """Fit a regressor (float targets) or classifier (string labels) on `data`.

    With `encoder` (a pretrained encoder ModelBundle) its weights start the
    model and its ASV embeddings are whitened (whiten_asv_embeddings), and
    `model_cfg` contributes only the fit's own choices (dropout, kmer_size); with
    `freeze_encoder` the nucleotide-level ASV encoder is frozen and
    every distinct ASV is embedded once for the whole run, so training costs
    only the sample level.
    """
    rng = np.random.default_rng([train_cfg.random_seed, 2])
    info = {"training": train_cfg.to_dict(), "freeze_encoder": bool(freeze_encoder),
            "pretrained": encoder is not None, "n_samples": len(data)}
    if task == "classifier":
        classes, codes = np.unique(np.asarray(targets, dtype=str), return_inverse=True)
        info["classes"] = [str(c) for c in classes]
        train_idx, val_idx = split_indices(len(data), train_cfg.validation_fraction, rng,
                                           strata=codes)
        data.targets = codes.astype(np.int64)
        n_outputs = len(classes)
        weights = None
        if class_weights == "balanced":
            counts = np.bincount(codes[train_idx], minlength=n_outputs).astype(np.float64)
            weights = torch.tensor(len(train_idx) / (n_outputs * np.maximum(counts, 1)),
                                   dtype=torch.float32)
    else:
        values = np.asarray(targets, dtype=np.float64)
        train_idx, val_idx = split_indices(len(data), train_cfg.validation_fraction, rng)
        mean, std = float(values[train_idx].mean()), float(values[train_idx].std())
        std = std if std > 0 else 1.0
        info["target_scaling"] = {"mean": mean, "std": std}
        data.targets = ((values - mean) / std).astype(np.float32)
        n_outputs, weights = 1, None
    info["train_samples"] = [data.sample_ids[i] for i in train_idx]

    if encoder is not None:
        model_cfg = ModelConfig.from_dict({**encoder.model_config.to_dict(), "task": task,
                                           "n_outputs": n_outputs, "faith_pd": False,
                                           # dropout regularizes this fit; not architecture
                                           "dropout": model_cfg.dropout,
                                           "kmer_size": model_cfg.kmer_size})
    else:
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "task": task,
                                           "n_outputs": n_outputs})
    torch.manual_seed(train_cfg.random_seed)
    model = AAMModel(model_cfg)
    if encoder is not None:
        shared = {k: v for k, v in encoder.state_dict.items()
                  if not k.startswith(("target_head", "faith_pd_head"))}
        if model_cfg.kmer_size != encoder.model_config.kmer_size:
            shared = {k: v for k, v in shared.items() if not k.startswith("kmer_bag.")}
        model.load_state_dict(shared, strict=False)
    if freeze_encoder and encoder is None:
        raise ValueError("freeze_encoder needs a pretrained_encoder: a randomly initialized "
                         "encoder would stay random.")
    device = resolve_device(train_cfg.device)
    if encoder is not None:
        asv_embeddings = whiten_asv_embeddings(model, data, device)
    if freeze_encoder:
        model.asv_encoder.requires_grad_(False)
        data.asv_embedding_table = asv_embeddings
    loss_fn = LossFunction(task, nuc_penalty=train_cfg.nuc_penalty,
                           unifrac_penalty=train_cfg.unifrac_penalty,
                           zero_distance_weight=zero_distance_weight, class_weights=weights,
                           regression_loss=train_cfg.regression_loss)
    result = train(model, data, train_idx, val_idx, loss_fn, train_cfg,
                   evaluate_targets(info, task, train_cfg.batch_size), log)
    info["best_epoch"] = result.best_epoch
    data.asv_embedding_table = None
    return ModelBundle(model_cfg, {k: v.cpu() for k, v in model.state_dict().items()},
                       result.history, info, result.best_validation, result.event_files)


@torch.no_grad()
def whiten_asv_embeddings(model, data, device, ridge=1e-3):
    """Set the model's fixed ASV whitening from the pretrained embeddings of the
    training ASVs: centred, rotated to principal axes and scaled to unit variance.

    Why: a UniFrac-pretrained encoder places ASVs along few directions (on
    oral-dev three principal components carry 90% of the variance), so what
    tells related ASVs apart is tiny next to the phylogenetic axes and a fit
    learns it slowly. `ridge` (a fraction of the total variance added to each
    axis) keeps near-empty directions from being blown up into noise.

    Returns the whitened embeddings of `data`'s ASVs on the CPU, the same values
    `encode_asvs` now gives them (a frozen fit's embedding table).
    """
    d = model.asv_whitening.shape[0]
    model.asv_center.zero_()
    model.asv_whitening.copy_(torch.eye(d))
    raw = embed_all_asvs(model, data, device)
    embeddings = raw.double()
    center = embeddings.mean(0)
    centred = embeddings - center
    variance, axes = torch.linalg.eigh(centred.T @ centred / len(embeddings))
    variance = variance.clamp_min(0)
    if variance.sum() == 0:       # a single ASV: nothing to whiten
        return raw
    scale = (variance + ridge * variance.sum()).rsqrt()
    center, whitening = center.float(), (axes @ torch.diag(scale) @ axes.T).float()
    model.asv_center.copy_(center)
    model.asv_whitening.copy_(whitening)
    return (raw - center) @ whitening


@torch.no_grad()
def embed_all_asvs(model, data, device, chunk=512):
    """Embed every distinct ASV of `data` once (for a frozen encoder)."""
    from .train import autocast
    model.to(device).eval()
    parts = []
    for start in range(0, len(data.tokens), chunk):
        tokens = torch.from_numpy(data.tokens[start:start + chunk].astype(np.int64)).to(device)
        with autocast(device):
            parts.append(model.encode_asvs(tokens)[0].float().cpu())
    return torch.cat(parts)


def _outputs(bundle, data, batch_size, device):
    """The bundle's model run (unmasked) over every sample of `data`."""
    device = resolve_device(device)
    model = bundle.build_model().to(device)
    return predict_outputs(model, data, np.arange(len(data)), batch_size, device)


def predict(bundle, data, batch_size=64, device="auto"):
    """Predictions (and class probabilities) for every sample of `data`."""
    return decode(bundle.task, bundle.info, _outputs(bundle, data, batch_size, device))


def embed(bundle, data, batch_size=64, device="auto"):
    """Sample embeddings and distance embeddings for every sample of `data`."""
    out = _outputs(bundle, data, batch_size, device)
    return out["sample_embeddings"], out["distance_embeddings"]
