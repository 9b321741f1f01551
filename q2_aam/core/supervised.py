"""Supervised fits (regression, classification) and prediction from a ModelBundle."""
import os
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from .bundle import ModelBundle
from .config import ModelConfig, TrainConfig
from .data import split_indices
from .losses import LossFunction, resolve_regression_loss
from .lookup import NeighbourLookup, agreed_answer, choose_tolerance
from .metrics import classification_metrics, regression_metrics
from .model import AAMModel
from .train import predict_outputs, resolve_device, train

# Bins of the 'binned' regression loss: one per SAMPLES_PER_BIN training
# samples, within [MIN_BINS, MAX_BINS]. Measured: on oral-dev ages (~1500
# samples) 32, 64 and 128 bins gave the same held-out MAE within seed spread; on
# 160 simulated samples 64 bins learned slowly and 8-16 did better.
SAMPLES_PER_BIN, MIN_BINS, MAX_BINS = 20, 8, 64


def decode(task, info, outputs):
    """Model outputs -> (predictions in original units or labels, probabilities or None).

    `info` is the model's task information (target scaling or class labels).
    """
    raw = outputs["target"]
    if task == "regressor":
        scale = info["target_scaling"]
        if "target_bins" in info:
            return binned_median(raw, np.asarray(info["target_bins"])), None
        return raw[:, 0] * scale["std"] + scale["mean"], None
    logits = torch.from_numpy(raw)
    probabilities = torch.softmax(logits, dim=-1).numpy()
    labels = np.array(info["classes"], dtype=object)
    return labels[probabilities.argmax(1)], probabilities


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
        metrics = classification_metrics(true_codes, probabilities.argmax(1))
        return metrics, detail
    return evaluate


def member_seeds(random_seed, ensemble_size):
    """Seeds of an ensemble's members. The first keeps `random_seed`, so an
    ensemble of one is the plain fit; the others are derived from it, so that
    ensembles fitted with neighbouring seeds share no member."""
    return [random_seed] + [int(np.random.SeedSequence([random_seed, k]).generate_state(1)[0])
                            for k in range(1, ensemble_size)]


def fit(data, targets, task, model_cfg: ModelConfig, train_cfg: TrainConfig, encoder=None,
        freeze_encoder=False, class_weights="none", lookup_neighbours=0, log=None):
    """Fit a regressor (float targets) or classifier (string labels) on `data`.

    With `encoder` (a pretrained encoder ModelBundle) its weights start the
    model and its ASV embeddings are whitened (whiten_asv_embeddings), and
    `model_cfg` contributes only the fit's own choices (dropout, kmer_size,
    ensemble_size); with `freeze_encoder` the nucleotide-level ASV encoder is
    frozen and every distinct ASV is embedded once for the whole run, so
    training costs only the sample level.

    With `model_cfg.ensemble_size` > 1 the members are fitted one after the
    other, each with its own seed (member_seeds), validation split and early
    stopping; the first member's training split sets the target scaling (and
    bins) they share. The history and validation predictions then gain a
    'member' column (1-based) and info["best_epoch"] is a list.

    A regressor with `lookup_neighbours` > 0 also answers from its fitted
    samples where that many nearest ones agree (lookup.py); fit_lookup chooses
    how closely they must agree on the members' validation splits.
    """
    if freeze_encoder and encoder is None:
        raise ValueError("freeze_encoder needs a pretrained_encoder: a randomly initialized "
                         "encoder would stay random.")
    log = log or (lambda message: print(message, file=sys.stderr))
    train_cfg = replace(train_cfg, regression_loss=resolve_regression_loss(
        train_cfg.regression_loss, pretrained=encoder is not None))
    seeds = member_seeds(train_cfg.random_seed, model_cfg.ensemble_size)
    info = {"training": train_cfg.to_dict(), "freeze_encoder": bool(freeze_encoder),
            "pretrained": encoder is not None, "n_samples": len(data)}
    strata = None
    if task == "classifier":
        classes, strata = np.unique(np.asarray(targets, dtype=str), return_inverse=True)
        info["classes"] = [str(c) for c in classes]
        data.targets = strata.astype(np.int64)
        n_outputs = len(classes)
    splits = [split_indices(len(data), train_cfg.validation_fraction,
                            np.random.default_rng([seed, 2]), strata=strata) for seed in seeds]
    bin_centers = None
    if task == "regressor":
        values, first_train = np.asarray(targets, dtype=np.float64), splits[0][0]
        mean, std = float(values[first_train].mean()), float(values[first_train].std())
        std = std if std > 0 else 1.0
        info["target_scaling"] = {"mean": mean, "std": std}
        data.targets = ((values - mean) / std).astype(np.float32)
        n_outputs = 1
        if train_cfg.regression_loss == "binned":
            centers = target_bins(values[first_train])
            info["target_bins"] = [float(c) for c in centers]
            n_outputs = len(centers)
            bin_centers = torch.tensor((centers - mean) / std, dtype=torch.float32)
    trained = np.unique(np.concatenate([train_idx for train_idx, _ in splits]))
    info["train_samples"] = [data.sample_ids[i] for i in trained]

    fit_choices = {"task": task, "n_outputs": n_outputs, "ensemble_size": len(seeds)}
    if encoder is not None:
        model_cfg = ModelConfig.from_dict({**encoder.model_config.to_dict(), **fit_choices,
                                           "faith_pd": False,
                                           # dropout regularizes this fit; not architecture
                                           "dropout": model_cfg.dropout,
                                           "kmer_size": model_cfg.kmer_size})
        shared = {k: v for k, v in encoder.state_dict.items()
                  if not k.startswith(("target_head", "faith_pd_head"))}
        if model_cfg.kmer_size != encoder.model_config.kmer_size:
            shared = {k: v for k, v in shared.items() if not k.startswith("kmer_bag.")}
    else:
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), **fit_choices})
    device = resolve_device(train_cfg.device)
    members, results = [], []
    for k, (seed, (train_idx, val_idx)) in enumerate(zip(seeds, splits)):
        if len(seeds) > 1:
            log(f"Ensemble member {k + 1} of {len(seeds)} (seed {seed}).")
        torch.manual_seed(seed)
        model = AAMModel(model_cfg)
        if encoder is not None:
            model.load_state_dict(shared, strict=False)
            if not members:
                asv_embeddings = whiten_asv_embeddings(model, data, device)
            else:       # the same encoder and ASVs: the first member's whitening
                model.asv_center.copy_(members[0].asv_center)
                model.asv_whitening.copy_(members[0].asv_whitening)
        if freeze_encoder:
            model.asv_encoder.requires_grad_(False)
            data.asv_embedding_table = asv_embeddings
        weights = None
        if class_weights == "balanced":
            counts = np.bincount(data.targets[train_idx], minlength=n_outputs).astype(np.float64)
            weights = torch.tensor(len(train_idx) / (n_outputs * np.maximum(counts, 1)),
                                   dtype=torch.float32)
        loss_fn = LossFunction.for_run(task, train_cfg, class_weights=weights,
                                       bin_centers=bin_centers)
        member_cfg = replace(train_cfg, random_seed=seed, tensorboard_dir=_member_dir(
            train_cfg.tensorboard_dir, k, len(seeds)))
        results.append(train(model, data, train_idx, val_idx, loss_fn, member_cfg,
                             evaluate_targets(info, task, train_cfg.batch_size), log))
        members.append(model)
    data.asv_embedding_table = None
    bundle = _bundle(model_cfg, members, results, info)
    if task == "regressor" and lookup_neighbours > 0:
        validations = [result.best_validation for result in results]
        bundle.lookup = fit_lookup(data, values, splits, validations, lookup_neighbours, std,
                                   info, log)
    return bundle


def fit_lookup(data, values, splits, validations, neighbours, scale, info, log):
    """The neighbour look-up's arrays (None when it stays off), its settings
    and validation errors in `info["neighbour_lookup"]`.

    The tolerance is chosen on the validation samples of every member, each
    with its own training split as references and its own predictions
    (`validations`): an ensemble's pooled predictions of held-out samples do
    not exist, as its members hold out different samples, and ten members'
    splits choose far less noisily than one. The stored references are then
    every fitted sample.
    """
    settings = info["neighbour_lookup"] = {"neighbours": int(neighbours), "tolerance": None}
    parts = [(train_idx, val_idx, validation) for (train_idx, val_idx), validation
             in zip(splits, validations) if validation is not None and len(val_idx)]
    if not parts:
        log("The neighbour look-up stays off: choosing its tolerance needs a validation "
            "split (validation_fraction > 0).")
        return None
    neighbour_targets, predicted, true = [], [], []
    for train_idx, val_idx, validation in parts:
        held_out = NeighbourLookup.from_samples(data, train_idx, values[train_idx], neighbours)
        neighbour_targets.append(held_out.neighbour_targets(data, val_idx))
        predicted.append(validation["predicted"].to_numpy())
        true.append(values[val_idx])
    neighbour_targets, predicted = np.concatenate(neighbour_targets), np.concatenate(predicted)
    tolerance, errors = choose_tolerance(neighbour_targets, predicted, np.concatenate(true), scale)
    settings.update(tolerance=tolerance, validation_mae=errors,
                    validation_samples=int(len(predicted)))
    if tolerance is None:
        log(f"The neighbour look-up stays off: no tolerance beat the model alone on the "
            f"validation split (MAE {errors['none']:.4g}).")
        return None
    _, agree = agreed_answer(neighbour_targets, predicted, tolerance)
    log(f"Neighbour look-up: where the {neighbours} nearest fitted samples agree within "
        f"{tolerance:.4g} (on validation: {agree.mean():.0%} of samples; MAE "
        f"{errors['none']:.4g} -> {min(errors.values()):.4g}), their median is the answer.")
    everything = np.arange(len(data))
    return NeighbourLookup.from_samples(data, everything, values, neighbours,
                                        tolerance).to_arrays()


def _member_dir(directory, k, n_members):
    return os.path.join(directory, f"member{k + 1}") if directory and n_members > 1 else directory


def _bundle(model_cfg, members, results, info):
    """One ModelBundle of the fitted members (see fit)."""
    if len(members) == 1:
        result, = results
        info["best_epoch"] = result.best_epoch
        return ModelBundle(model_cfg, {k: v.cpu() for k, v in members[0].state_dict().items()},
                           result.history, info, result.best_validation, result.event_files)
    info["best_epoch"] = [result.best_epoch for result in results]
    state = {f"members.{k}.{name}": value.cpu() for k, member in enumerate(members)
             for name, value in member.state_dict().items()}

    def numbered(frames):
        frames = [f.assign(member=k + 1) for k, f in enumerate(frames) if f is not None]
        return pd.concat(frames, ignore_index=True) if frames else None
    events = {f"member{k + 1}/{name}": content for k, result in enumerate(results)
              for name, content in result.event_files.items()}
    return ModelBundle(model_cfg, state, numbered([r.history for r in results]), info,
                       numbered([r.best_validation for r in results]), events)


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


def predict(bundle, data, batch_size=64, device="auto", log=None):
    """Predictions (and class probabilities) for every sample of `data`."""
    predicted, probabilities = decode(bundle.task, bundle.info,
                                      _outputs(bundle, data, batch_size, device))
    if bundle.lookup is not None:
        settings = bundle.info["neighbour_lookup"]
        lookup = NeighbourLookup.from_arrays(bundle.lookup, settings["neighbours"],
                                             settings["tolerance"])
        predicted, agree = lookup.answer(lookup.neighbour_targets(data), predicted)
        (log or (lambda message: None))(
            f"{int(agree.sum())} of {len(agree)} sample(s) answered by the neighbour look-up.")
    return predicted, probabilities


def embed(bundle, data, batch_size=64, device="auto"):
    """Sample embeddings and distance embeddings for every sample of `data`."""
    out = _outputs(bundle, data, batch_size, device)
    return out["sample_embeddings"], out["distance_embeddings"]
