"""Self-supervised pretraining: UniFrac from embedding distances + masked nucleotides."""
import numpy as np
import pandas as pd
import torch

from .bundle import ModelBundle
from .config import ModelConfig, TrainConfig
from .data import split_indices
from .losses import LossFunction
from .model import AAMModel, predicted_distance
from .train import predict_outputs, train

MAX_VALIDATION_PAIRS = 20000      # pairs kept in the detail table
MAX_VALIDATION_SAMPLES = 2000     # samples whose pairs give the validation UniFrac fit


def unifrac_fit(true, predicted):
    """R^2 and Pearson r of predicted against true distances."""
    residual = ((true - predicted) ** 2).sum()
    total = ((true - true.mean()) ** 2).sum()
    r2 = float(1 - residual / total) if total > 0 else float("nan")
    pearson = float(np.corrcoef(true, predicted)[0, 1]) if true.std() > 0 and predicted.std() > 0 \
        else float("nan")
    return r2, pearson


def evaluate_unifrac(batch_size, max_samples=MAX_VALIDATION_SAMPLES):
    """Held-out fit over all pairs of validation samples (not only within batches).

    Above `max_samples` validation samples, a seeded subset of that many is
    used, so memory stays bounded however large the cohort. The true distances
    never change between epochs: they are computed once and kept.
    """
    kept = {"source": None, "indices": None, "true": None}

    def evaluate(model, data, indices, device):
        indices = np.asarray(indices)
        if len(indices) > max_samples:
            pick = np.random.default_rng(0).choice(len(indices), max_samples, replace=False)
            indices = indices[np.sort(pick)]
        if kept["source"] is not data.distance_source or \
                not np.array_equal(kept["indices"], indices):
            kept.update(source=data.distance_source, indices=indices,
                        true=data.distance_source.submatrix(indices))
        out = predict_outputs(model, data, indices, batch_size, device)
        predicted = predicted_distance(torch.from_numpy(out["distance_embeddings"])).numpy()
        rows, cols = np.triu_indices(len(indices), k=1)
        true = kept["true"][rows, cols]
        predicted = predicted[rows, cols]
        r2, pearson = unifrac_fit(true, predicted)
        keep = np.arange(len(rows))
        if len(keep) > MAX_VALIDATION_PAIRS:
            keep = np.sort(np.random.default_rng(0).choice(len(keep), MAX_VALIDATION_PAIRS,
                                                           replace=False))
        ids = np.array(data.sample_ids)[indices]
        detail = pd.DataFrame({"sample_a": ids[rows[keep]], "sample_b": ids[cols[keep]],
                               "true": true[keep], "predicted": predicted[keep]})
        return {"unifrac_r2": r2, "unifrac_pearson": pearson}, detail
    return evaluate


def pretrain(data, model_cfg: ModelConfig, train_cfg: TrainConfig, log=None):
    """Pretrain an encoder on `data` (a SampleSet with distances, optionally faith_pd)."""
    if data.distances is None:
        raise ValueError("Pretraining needs a distance matrix.")
    rng = np.random.default_rng([train_cfg.random_seed, 2])
    train_idx, val_idx = split_indices(len(data), train_cfg.validation_fraction, rng)
    info = {"n_samples": len(data), "n_features": len(data.feature_ids),
            "train_samples": [data.sample_ids[i] for i in train_idx],
            "training": train_cfg.to_dict()}
    if data.faith_pd is not None:
        raw = data.faith_pd
        mean, std = float(raw[train_idx].mean()), float(raw[train_idx].std() or 1.0)
        data.faith_pd = ((raw - mean) / std).astype(np.float32)
        info["faith_pd_scaling"] = {"mean": mean, "std": std}
    torch.manual_seed(train_cfg.random_seed)
    model = AAMModel(model_cfg)
    loss_fn = LossFunction.for_run("encoder", train_cfg)
    result = train(model, data, train_idx, val_idx, loss_fn, train_cfg,
                   evaluate_unifrac(train_cfg.batch_size), log)
    info["best_epoch"] = result.best_epoch
    return ModelBundle(model_cfg, {k: v.cpu() for k, v in model.state_dict().items()},
                       result.history, info, result.best_validation, result.event_files)
