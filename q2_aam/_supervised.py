"""fit-regressor, fit-classifier, predict, predict-probabilities, embed, predict-distances."""
import biom
import numpy as np
import pandas as pd
import qiime2
import skbio

from .core.bundle import ModelBundle
from ._inputs import _few, attach_distances, build_sample_set, log
from ._pretrain import check_split_size


def _targets(data_ids, column, missing_samples):
    """Align a metadata column to the table's samples; returns (kept ids, values)."""
    series = column.to_series()
    absent = [s for s in data_ids if s not in series.index]
    if absent and missing_samples == "error":
        raise ValueError(
            f"{len(absent)} sample(s) of the table are missing from the metadata: "
            f"{_few(absent)}. Add them to the metadata, filter the table, or use "
            "missing_samples='ignore'.")
    series = series.reindex([s for s in data_ids if s in series.index])
    n_missing_values = int(series.isna().sum())
    if n_missing_values:
        log(f"Dropping {n_missing_values} sample(s) with no value in '{column.name}': "
            f"{_few(series.index[series.isna()])}.")
    if absent:
        log(f"Ignoring {len(absent)} table sample(s) absent from the metadata.")
    series = series.dropna()
    if series.empty:
        raise ValueError(f"None of the table's {len(data_ids)} samples has a value in "
                         f"'{column.name}'. Check that the table and the metadata describe the "
                         "same samples (their sample IDs must match).")
    return list(series.index), series.to_numpy()


def _sample_set_with_targets(table, sequences, metadata, missing_samples, max_bp, asv_limit):
    """The table's samples that have a value in `metadata` as a SampleSet, and their
    values in its sample order (samples without counts are dropped from both)."""
    ids, values = _targets(list(table.ids(axis="sample")), metadata, missing_samples)
    table = table.filter(ids, axis="sample", inplace=False)
    data = build_sample_set(table, sequences, max_bp, asv_limit)
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    return data, values[[position[s] for s in data.sample_ids]]


def _fit(task, table, sequences, metadata, pretrained_encoder, distance_matrix, freeze_encoder,
         missing_samples, class_weights, params):
    from .core.config import ModelConfig, TrainConfig
    from .core.supervised import fit

    arch_names = ("embedding_dim", "attention_heads", "attention_layers", "max_bp", "asv_limit")
    arch = {k: params.pop(k) for k in arch_names}
    zero_distance_weight = params.pop("zero_distance_weight")
    kmer_size, ensemble_size = params.pop("kmer_size"), params.pop("ensemble_size")
    lookup_neighbours = params.pop("lookup_neighbours", 0)
    if params.get("regression_loss") == "auto":
        # Measured: with a pretrained encoder 'l1' gave a clearly lower held-out
        # MAE than 'mse' on real data; from scratch, 'l1' sat at the median for
        # tens of epochs (early stopping then kept the constant) where 'mse' learned.
        params["regression_loss"] = "l1" if pretrained_encoder is not None else "mse"
    if pretrained_encoder is not None:
        log("Using the pretrained encoder's architecture; architecture parameters are ignored.")
        arch = {k: getattr(pretrained_encoder.model_config, k) for k in arch_names}
        if pretrained_encoder.task != "encoder":
            raise ValueError("pretrained_encoder must be an AAMModel[Encoder].")
    model_cfg = ModelConfig(**arch, kmer_size=kmer_size, ensemble_size=ensemble_size)
    train_cfg = TrainConfig(**{**params, "tensorboard_dir": params["tensorboard_dir"] or "",
                               "unifrac_penalty": params["unifrac_penalty"]
                               if distance_matrix is not None else 0.0})
    data, values = _sample_set_with_targets(table, sequences, metadata, missing_samples,
                                            model_cfg.max_bp, model_cfg.asv_limit)
    if task == "classifier":
        _check_classes(values, train_cfg.validation_fraction)
    check_split_size(len(data), train_cfg.batch_size, train_cfg.validation_fraction)
    if distance_matrix is not None:
        attach_distances(data, distance_matrix)
    log(f"Fitting a {task} of '{metadata.name}' on {len(data)} samples.")
    return fit(data, values, task, model_cfg, train_cfg, encoder=pretrained_encoder,
               freeze_encoder=freeze_encoder, class_weights=class_weights,
               zero_distance_weight=zero_distance_weight,
               lookup_neighbours=lookup_neighbours, log=log)


def _check_classes(labels, validation_fraction):
    classes, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"Only one class ({classes[0] if len(classes) else 'none'}) is present; "
                         "a classifier needs at least two.")
    # Stratified validation takes at least one sample of each class and must leave one.
    if validation_fraction > 0 and counts.min() < 2:
        small = classes[counts < 2]
        raise ValueError(
            f"Class(es) {_few(small)} have a single sample, too few for the stratified "
            "validation split. Remove or merge them, or set validation_fraction to 0.")


def fit_regressor(table: biom.Table, sequences: pd.Series, metadata: qiime2.NumericMetadataColumn,
                  pretrained_encoder: ModelBundle = None,
                  distance_matrix: skbio.DistanceMatrix = None, freeze_encoder: bool = False,
                  missing_samples: str = "error", regression_loss: str = "auto",
                  lookup_neighbours: int = 3, kmer_size: int = 6, asv_dropout: float = 0.5,
                  ensemble_size: int = 1,
                  embedding_dim: int = 128, attention_heads: int = 4,
                  attention_layers: int = 4, max_bp: int = 150, asv_limit: int = 1024,
                  batch_size: int = 32, epochs: int = 100,
                  learning_rate: float = 3e-4, weight_decay: float = 0.01,
                  optimizer: str = "adamw", scheduler: str = "warmup_cosine",
                  warmup: float = 0.05, patience: int = 10, validation_fraction: float = 0.1,
                  max_grad_norm: float = 1.0, gradient_accumulation_steps: int = 1,
                  nuc_mask_ratio: float = 0.0, nuc_penalty: float = 1.0,
                  unifrac_penalty: float = 1.0, zero_distance_weight: float = 1.0,
                  device: str = "auto", random_seed: int = 0,
                  tensorboard_dir: str = None) -> ModelBundle:
    params = dict(locals())
    for name in ("table", "sequences", "metadata", "pretrained_encoder", "distance_matrix",
                 "freeze_encoder", "missing_samples"):
        params.pop(name)
    return _fit("regressor", table, sequences, metadata, pretrained_encoder, distance_matrix,
                freeze_encoder, missing_samples, "none", params)


def fit_classifier(table: biom.Table, sequences: pd.Series,
                   metadata: qiime2.CategoricalMetadataColumn,
                   pretrained_encoder: ModelBundle = None,
                   distance_matrix: skbio.DistanceMatrix = None, freeze_encoder: bool = False,
                   missing_samples: str = "error", class_weights: str = "none",
                   kmer_size: int = 6, asv_dropout: float = 0.5, ensemble_size: int = 1,
                   embedding_dim: int = 128, attention_heads: int = 4, attention_layers: int = 4,
                   max_bp: int = 150, asv_limit: int = 1024, batch_size: int = 32,
                   epochs: int = 100, learning_rate: float = 3e-4, weight_decay: float = 0.01,
                   optimizer: str = "adamw", scheduler: str = "warmup_cosine",
                   warmup: float = 0.05, patience: int = 10, validation_fraction: float = 0.1,
                   max_grad_norm: float = 1.0, gradient_accumulation_steps: int = 1,
                   nuc_mask_ratio: float = 0.0, nuc_penalty: float = 1.0,
                   unifrac_penalty: float = 1.0, zero_distance_weight: float = 1.0,
                   device: str = "auto", random_seed: int = 0,
                   tensorboard_dir: str = None) -> ModelBundle:
    params = dict(locals())
    for name in ("table", "sequences", "metadata", "pretrained_encoder", "distance_matrix",
                 "freeze_encoder", "missing_samples", "class_weights"):
        params.pop(name)
    return _fit("classifier", table, sequences, metadata, pretrained_encoder, distance_matrix,
                freeze_encoder, missing_samples, class_weights, params)


def _sample_set(model, table, sequences):
    cfg = model.model_config
    return build_sample_set(table, sequences, cfg.max_bp, cfg.asv_limit)


def predict(model: ModelBundle, table: biom.Table, sequences: pd.Series,
            device: str = "auto") -> pd.Series:
    from .core.supervised import predict as core_predict
    data = _sample_set(model, table, sequences)
    predictions, _ = core_predict(model, data, device=device, log=log)
    name = "prediction"
    series = pd.Series(predictions, index=pd.Index(data.sample_ids, name="SampleID"), name=name)
    return series.astype(float) if model.task == "regressor" else series.astype(str)


def predict_probabilities(model: ModelBundle, table: biom.Table, sequences: pd.Series,
                          device: str = "auto") -> pd.DataFrame:
    from .core.supervised import predict as core_predict
    if model.task != "classifier":
        raise ValueError("Class probabilities need an AAMModel[Classifier].")
    data = _sample_set(model, table, sequences)
    _, probabilities = core_predict(model, data, device=device)
    return pd.DataFrame(probabilities, index=pd.Index(data.sample_ids, name="SampleID"),
                        columns=model.info["classes"])


def embed(model: ModelBundle, table: biom.Table, sequences: pd.Series,
          device: str = "auto") -> skbio.OrdinationResults:
    from .core.supervised import embed as core_embed
    data = _sample_set(model, table, sequences)
    embeddings, _ = core_embed(model, data, device=device)
    return ordination(embeddings.astype(np.float64), data.sample_ids)


def ordination(embeddings, sample_ids):
    """PCA of the sample embeddings as OrdinationResults (Emperor reads these)."""
    centered = embeddings - embeddings.mean(0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    eigvals = s ** 2 / max(1, len(centered) - 1)
    axes = [f"Axis {i + 1}" for i in range(len(s))]
    total = eigvals.sum() if eigvals.sum() > 0 else 1.0
    return skbio.OrdinationResults(
        short_method_name="AAM", long_method_name="PCA of AAM sample embeddings",
        eigvals=pd.Series(eigvals, index=axes),
        samples=pd.DataFrame(u * s, index=sample_ids, columns=axes),
        proportion_explained=pd.Series(eigvals / total, index=axes))


def predict_distances(encoder: ModelBundle, table: biom.Table, sequences: pd.Series,
                      device: str = "auto") -> skbio.DistanceMatrix:
    import torch
    from .core.model import predicted_distance
    from .core.supervised import embed as core_embed
    data = _sample_set(encoder, table, sequences)
    _, distance_embeddings = core_embed(encoder, data, device=device)
    distances = predicted_distance(torch.from_numpy(distance_embeddings)).numpy().astype(np.float64)
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    return skbio.DistanceMatrix(distances, ids=data.sample_ids)
