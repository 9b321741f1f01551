"""Supervised fits (regression, classification): one model, or an ensemble of
members fitted one after the other (side by side, one per rank, in a process
group), from scratch or from a pretrained encoder.

The pieces live by concern: targets.py encodes targets and decodes outputs,
transfer.py starts a fit from an encoder, lookup.py is the regressor's optional
neighbour look-up, inference.py answers for new samples (predict and embed are
importable from here too).
"""
import contextlib
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from . import distributed
from .bundle import ModelBundle
from .config import ModelConfig, TrainConfig
from .covariates import CovariateCodec, aligned
from .data import split_indices
from .inference import decode, embed, predict
from .losses import LossFunction, resolve_regression_loss
from .lookup import fit_lookup, store_lookup
from .metrics import classification_metrics, regression_metrics
from .model import AAMModel
from .targets import (CDF_AT_TRUE, MAX_BINS, MIN_BINS, TargetCodec, binned_median,
                      calibration_info, target_bins)
from .train import predict_outputs, resolve_device, train
from .transfer import (WHITENING_RIDGE, EncoderTransfer, embed_all_asvs, transferred_config,
                       whiten_asv_embeddings)


def fit(data, targets, task, model_cfg: ModelConfig, train_cfg: TrainConfig, encoder=None,
        freeze_encoder=False, class_weights="none", lookup_neighbours=0, log=None,
        whitening_ridge=WHITENING_RIDGE, covariates=None):
    """Fit a regressor (float targets) or classifier (string labels) on `data`,
    which is left as it was.

    With `encoder` (a pretrained encoder ModelBundle) its weights start the
    model and its ASV embeddings are whitened (transfer.whiten_asv_embeddings,
    with `whitening_ridge`; None leaves them unwhitened), and `model_cfg`
    contributes only the fit's own choices (dropout, kmer_size,
    ensemble_size); with `freeze_encoder` the nucleotide-level ASV encoder is
    frozen and every distinct ASV is embedded once for the whole run, so
    training costs only the sample level.

    With `model_cfg.ensemble_size` > 1 the members are fitted one after the
    other (in a process group side by side, one per rank: fit_dealt_members),
    each with its own seed (member_seeds), validation split and early
    stopping; the first member's training split sets the target scaling (and
    bins) they share. The history and validation predictions then gain a
    'member' column (1-based) and info["best_epoch"] is a list.

    A regressor with `lookup_neighbours` > 0 also answers from its fitted
    samples where that many nearest ones agree (lookup.py); fit_lookup chooses
    how closely they must agree on the members' validation splits.

    `covariates` (a DataFrame indexed by sample ID, every column used)
    condition the model (covariates.py); their categories and scaling come
    from the first member's training split, and predictions then need them.
    """
    if task not in ("regressor", "classifier"):
        raise ValueError(f"A fit's task is 'regressor' or 'classifier', not {task!r}; an "
                         "encoder is pretrained (pretrain.pretrain).")
    if freeze_encoder and encoder is None:
        raise ValueError("freeze_encoder needs a pretrained_encoder: a randomly initialized "
                         "encoder would stay random.")
    log = distributed.main_rank_log(log)
    train_cfg = replace(train_cfg, regression_loss=resolve_regression_loss(
        train_cfg.regression_loss, pretrained=encoder is not None))
    seeds = member_seeds(train_cfg.random_seed, model_cfg.ensemble_size)
    codec, splits = codec_and_splits(task, targets, len(data), train_cfg, seeds)
    info = fit_info(data, train_cfg, codec, splits, encoder, freeze_encoder)
    model_cfg = fitted_config(model_cfg, codec, len(seeds), encoder)
    fitted = data.replace(targets=codec.encode(targets))
    if covariates is not None:
        model_cfg, fitted = fit_covariates(covariates, fitted, splits[0][0], model_cfg, info)
    transfer = None if encoder is None else EncoderTransfer.from_encoder(
        encoder, model_cfg.kmer_size, freeze_encoder, whitening_ridge)
    members, results = fit_members(fitted, seeds, splits, model_cfg, train_cfg, transfer,
                                   codec, class_weights, info, log)
    bundle = _bundle(model_cfg, members, results, info)
    if codec.task == "regressor" and codec.predicts_distribution:
        calibrate_intervals(bundle)
    if task == "regressor" and lookup_neighbours > 0:
        store_lookup(bundle, *fit_lookup(
            data, np.asarray(targets, dtype=np.float64), splits,
            [result.best_validation for result in results], lookup_neighbours, codec.std, log))
    return bundle


def fit_covariates(frame, data, train_idx, model_cfg, info):
    """The covariates' codec from the training split `train_idx`, recorded in
    `info`: returns the ModelConfig sized for them and `data` carrying them."""
    frame = aligned(frame, data.sample_ids)
    codec = CovariateCodec.from_frame(frame, train_idx)
    values, _ = codec.encode(frame)
    info.update(codec.to_info())
    return replace(model_cfg, **codec.model_choices()), data.replace(covariates=values)


def calibrate_intervals(bundle):
    """Record in a binned or quantile regressor's info the calibration of its
    prediction intervals on the validation samples (targets.calibration_info;
    an ensemble's: every member's on its own validation split, pooled)."""
    validation = bundle.validation
    if validation is not None and CDF_AT_TRUE in validation:
        calibration = calibration_info(validation[CDF_AT_TRUE].to_numpy())
        if calibration is not None:
            bundle.info["interval_calibration"] = calibration


def member_seeds(random_seed, ensemble_size):
    """Seeds of an ensemble's members. The first keeps `random_seed`, so an
    ensemble of one is the plain fit; the others are derived from it, so that
    ensembles fitted with neighbouring seeds share no member."""
    return [random_seed] + [int(np.random.SeedSequence([random_seed, k]).generate_state(1)[0])
                            for k in range(1, ensemble_size)]


def codec_and_splits(task, targets, n_samples, train_cfg, seeds):
    """The TargetCodec and each member's (train, validation) split, seeded by its
    seed. A classifier's splits are stratified by class; a regressor's scaling
    (and bins) come from the first member's training split."""
    strata = None
    if task == "classifier":
        codec = TargetCodec.from_targets(task, targets)
        strata = codec.encode(targets)
    splits = [split_indices(n_samples, train_cfg.validation_fraction,
                            np.random.default_rng([seed, 2]), strata=strata) for seed in seeds]
    if task == "regressor":
        codec = TargetCodec.from_targets(task, targets, splits[0][0],
                                         binned=train_cfg.regression_loss == "binned",
                                         quantiles=train_cfg.regression_loss == "quantile")
    return codec, splits


def fit_info(data, train_cfg, codec, splits, encoder, freeze_encoder):
    """The fitted model's task information (what ModelBundle.info holds)."""
    trained = np.unique(np.concatenate([train_idx for train_idx, _ in splits]))
    return {"training": train_cfg.to_dict(), "freeze_encoder": bool(freeze_encoder),
            "pretrained": encoder is not None, "n_samples": len(data), **codec.to_info(),
            "train_samples": [data.sample_ids[i] for i in trained]}


def fitted_config(model_cfg, codec, n_members, encoder):
    """The ModelConfig of the fitted model: `model_cfg`, or the encoder's
    architecture with the fit's own choices (transfer.transferred_config)."""
    fit_choices = {"task": codec.task, "n_outputs": codec.n_outputs,
                   "ensemble_size": n_members,
                   "quantile_outputs": codec.quantile_levels is not None}
    if encoder is not None:
        return transferred_config(encoder, model_cfg, fit_choices)
    return ModelConfig.from_dict({**model_cfg.to_dict(), **fit_choices})


def member_loss(task, train_cfg, codec, class_weights, train_codes):
    """A member's loss. 'balanced' `class_weights` weigh each class by the
    inverse of its frequency among the member's training samples
    (`train_codes`, their class codes)."""
    weights = None
    if class_weights == "balanced":
        n_classes = codec.n_outputs
        counts = np.bincount(train_codes, minlength=n_classes).astype(np.float64)
        weights = torch.tensor(len(train_codes) / (n_classes * np.maximum(counts, 1)),
                               dtype=torch.float32)
    return LossFunction.for_run(task, train_cfg, class_weights=weights,
                                bin_centers=codec.scaled_bins(),
                                quantile_levels=codec.quantile_tensor())


def fit_members(data, seeds, splits, model_cfg, train_cfg, transfer, codec, class_weights,
                info, log):
    """Fit one model per seed on its split of `data` (a SampleSet whose targets
    are encoded); returns the models and their train.TrainResults.

    In a process group one model trains data-parallel; an ensemble's members
    are dealt out to the ranks instead (fit_dealt_members).
    """
    device = resolve_device(train_cfg.device)
    evaluate = evaluate_targets(info, codec.task, train_cfg.batch_size)
    dealt = len(seeds) > 1 and distributed.active()
    mine = distributed.dealt(len(seeds)) if dealt else range(len(seeds))
    # The first member's start sets the ASV whitening (and a frozen fit's ASV
    # embeddings) that every member takes: every rank makes it, as one process does.
    first, member_data = None, data
    if transfer is not None or 0 in mine:
        torch.manual_seed(seeds[0])
        first = AAMModel(model_cfg)
        if transfer is not None:
            member_data = transfer.start(first, data, device)

    def fit_member(k, log):
        model = first if k == 0 else _new_member(seeds[k], model_cfg, transfer, first)
        loss_fn = member_loss(codec.task, train_cfg, codec, class_weights,
                              data.targets[splits[k][0]])
        member_cfg = replace(train_cfg, random_seed=seeds[k], tensorboard_dir=_member_dir(
            train_cfg.tensorboard_dir, k, len(seeds)))
        return model, train(model, member_data, *splits[k], loss_fn, member_cfg, evaluate, log)
    if dealt:
        return fit_dealt_members(fit_member, seeds, model_cfg, device, log)
    fitted = []
    for k in mine:
        if len(seeds) > 1:
            log(f"Ensemble member {k + 1} of {len(seeds)} (seed {seeds[k]}).")
        fitted.append(fit_member(k, log))
    return [model for model, _ in fitted], [result for _, result in fitted]


def _new_member(seed, model_cfg, transfer, first):
    """A member seeded by `seed`, started from the encoder like `first` (if any)."""
    torch.manual_seed(seed)
    model = AAMModel(model_cfg)
    if transfer is not None:        # the same encoder and ASVs: the first's whitening
        transfer.start_like(model, first)
    return model


def fit_dealt_members(fit_member, seeds, model_cfg, device, log):
    """An ensemble's members dealt out to the ranks of the process group: member
    k trains on rank k % world size, alone on that rank's device (as one process
    trains it), and every rank then holds every member's weights and TrainResult,
    in member order. Ranks left without a member wait."""
    rank, world, n = distributed.rank(), distributed.world_size(), len(seeds)
    plan = "; ".join(f"process {r}: member {', '.join(str(k + 1) for k in range(r, n, world))}"
                     for r in range(min(world, n)))
    log(f"The {n} ensemble members train side by side, each process one at a time ({plan}).")
    mine, trained = distributed.dealt(n), {}
    with distributed.patient_group() as group:
        with distributed.alone(), contextlib.nullcontext() if rank == 0 else _no_stderr():
            for k in mine:
                log(f"Ensemble member {k + 1} of {n} (seed {seeds[k]}) trains on process "
                    f"{rank} ({_device_name(device)}).")
                trained[k] = fit_member(k, log)
        shared = distributed.gather_dealt(
            {k: ({name: value.detach().cpu() for name, value in model.state_dict().items()},
                 result) for k, (model, result) in trained.items()}, group)
    members = [trained[k][0] if k in trained else _loaded(model_cfg, shared[k][0])
               for k in range(n)]
    return members, [shared[k][1] for k in range(n)]


@contextlib.contextmanager
def _no_stderr():
    """Ranks but 0 train their members silently: alone, each is its own main
    process, which would draw a progress bar over rank 0's."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def _device_name(device):
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _loaded(model_cfg, state):
    model = AAMModel(model_cfg)
    model.load_state_dict(state)
    return model


def evaluate_targets(info, task, batch_size):
    """Validation predictions in original units, with task metrics; `info`
    holds the TargetCodec (TargetCodec.to_info)."""
    codec = TargetCodec.from_info(task, info)

    def evaluate(model, data, indices, device):
        out = predict_outputs(model, data, indices, batch_size, device)
        codes = data.targets[indices]
        predicted, probabilities = codec.decode(out["target"])
        true = codec.decode_targets(codes)
        detail = pd.DataFrame({"sample_id": np.array(data.sample_ids)[indices], "true": true,
                               "predicted": predicted})
        if task == "regressor":
            if codec.predicts_distribution:     # for the interval calibration
                detail[CDF_AT_TRUE] = codec.cdf(out["target"], true)
            return regression_metrics(true, predicted), detail
        for c, label in enumerate(codec.classes):
            detail[f"prob:{label}"] = probabilities[:, c]
        return classification_metrics(codes, probabilities.argmax(1)), detail
    return evaluate


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


# fit's own names, and the other modules' that callers import from here.
__all__ = ["fit", "member_seeds", "evaluate_targets", "predict", "embed", "decode",
           "binned_median", "target_bins", "MIN_BINS", "MAX_BINS", "whiten_asv_embeddings",
           "embed_all_asvs", "classification_metrics", "regression_metrics"]
