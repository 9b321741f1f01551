"""fit-regressor, fit-classifier, predict, predict-probabilities, embed, predict-distances."""
import biom
import numpy as np
import pandas as pd
import qiime2
import skbio

from .core.bundle import ModelBundle
from .core.inputs import (attach_unifrac, build_sample_set, check_classes, check_split_size,
                          log, notice, sample_set_with_targets)
from ._parameters import configs, live_tensorboard_dir, resolve_seed, takes_parameters



def _fit(task, table, sequences, metadata, pretrained_encoder, distance_matrix, phylogeny,
         parameters):
    from .core.supervised import fit

    if pretrained_encoder is not None and pretrained_encoder.task != "encoder":
        raise ValueError("pretrained_encoder must be an AAMModel[Encoder].")
    model_cfg, train_cfg, fit_keywords = configs(
        "fit", parameters, random_seed=resolve_seed(parameters["random_state"]),
        tensorboard_dir=live_tensorboard_dir(),
        # the UniFrac loss needs distances
        unifrac_penalty=(parameters["unifrac_penalty"]
                         if distance_matrix is not None or phylogeny is not None else 0.0))
    # With a pretrained encoder, core.fit takes the encoder's architecture and
    # only the fit's own choices (k-mer size, ensemble size) from model_cfg.
    architecture = model_cfg
    if pretrained_encoder is not None:
        notice("Using the pretrained encoder's architecture; architecture parameters are ignored.")
        architecture = pretrained_encoder.model_config
    else:
        fit_keywords["freeze_encoder"] = False     # nothing pretrained to freeze
    covariates = _covariate_frame(parameters["covariates"])
    if covariates is not None:
        from .core.covariates import refuse_target_column, samples_with_covariates
        refuse_target_column(covariates, metadata.name)
        table = table.filter(samples_with_covariates(
            list(table.ids(axis="sample")), covariates, parameters["missing_samples"]),
            axis="sample", inplace=False)
    data, values = sample_set_with_targets(table, sequences, metadata,
                                           parameters["missing_samples"],
                                           architecture.max_bp, architecture.asv_limit)
    if task == "classifier":
        check_classes(values, train_cfg.validation_fraction)
    check_split_size(len(data), train_cfg.validation_fraction)
    attach_unifrac(data, distance_matrix, phylogeny, parameters["unifrac_metric"],
                   required=False)
    log(f"Fitting a {task} of '{metadata.name}' on {len(data)} samples.")
    # One device: fit runs here; more: in worker processes (see _pretrain.pretrain).
    from .core.distributed import train_distributed
    return train_distributed(fit, parameters["n_devices"], data, values, task, model_cfg,
                             train_cfg, encoder=pretrained_encoder, log=log,
                             covariates=covariates, **fit_keywords)


def _covariate_frame(covariates):
    """qiime2.Metadata -> DataFrame (numeric columns as numbers, categorical as
    strings), or None."""
    return None if covariates is None else covariates.to_dataframe()


@takes_parameters("fit_regressor")
def fit_regressor(table: biom.Table, sequences: pd.Series, metadata: qiime2.NumericMetadataColumn,
                  pretrained_encoder: ModelBundle = None,
                  distance_matrix: skbio.DistanceMatrix = None,
                  phylogeny: skbio.TreeNode = None, **parameters) -> ModelBundle:
    return _fit("regressor", table, sequences, metadata, pretrained_encoder, distance_matrix,
                phylogeny, parameters)


@takes_parameters("fit_classifier")
def fit_classifier(table: biom.Table, sequences: pd.Series,
                   metadata: qiime2.CategoricalMetadataColumn,
                   pretrained_encoder: ModelBundle = None,
                   distance_matrix: skbio.DistanceMatrix = None,
                   phylogeny: skbio.TreeNode = None, **parameters) -> ModelBundle:
    return _fit("classifier", table, sequences, metadata, pretrained_encoder, distance_matrix,
                phylogeny, parameters)


def _sample_set(model, table, sequences, covariates=None):
    """The table as the model reads it, carrying the model's covariates (a
    qiime2.Metadata; a model fitted with covariates needs them)."""
    from .core.covariates import with_covariates
    cfg = model.model_config
    data = build_sample_set(table, sequences, cfg.max_bp, cfg.asv_limit)
    return with_covariates(model, data, _covariate_frame(covariates))


@takes_parameters("predict")
def predict(model: ModelBundle, table: biom.Table, sequences: pd.Series,
            **parameters) -> pd.Series:
    from .core.inference import predict as model_then_lookup
    from .core.inputs import refuse_non_finite
    data = _sample_set(model, table, sequences, parameters["covariates"])
    # the model, then a regressor's optional neighbour look-up
    predictions, probabilities = model_then_lookup(model, data, device=parameters["device"],
                                                   log=log)
    # A classifier's labels come from its probabilities: NaN ones would still give a label.
    refuse_non_finite(predictions if probabilities is None else probabilities,
                      "predictions" if probabilities is None else "class probabilities",
                      data.sample_ids, model)
    name = "prediction"
    series = pd.Series(predictions, index=pd.Index(data.sample_ids, name="SampleID"), name=name)
    return series.astype(float) if model.task == "regressor" else series.astype(str)


@takes_parameters("predict_probabilities")
def predict_probabilities(model: ModelBundle, table: biom.Table, sequences: pd.Series,
                          **parameters) -> pd.DataFrame:
    from .core.inference import model_predictions
    if model.task != "classifier":
        raise ValueError("Class probabilities need an AAMModel[Classifier].")
    from .core.inputs import refuse_non_finite
    data = _sample_set(model, table, sequences, parameters["covariates"])
    _, probabilities = model_predictions(model, data, device=parameters["device"])
    refuse_non_finite(probabilities, "class probabilities", data.sample_ids, model)
    return pd.DataFrame(probabilities, index=pd.Index(data.sample_ids, name="SampleID"),
                        columns=model.info["classes"])


@takes_parameters("embed")
def embed(model: ModelBundle, table: biom.Table, sequences: pd.Series,
          **parameters) -> skbio.OrdinationResults:
    from .core.inference import embed as core_embed
    from .core.inputs import refuse_non_finite
    data = _sample_set(model, table, sequences, parameters["covariates"])
    embeddings, _ = core_embed(model, data, device=parameters["device"])
    refuse_non_finite(embeddings, "sample embeddings", data.sample_ids, model)
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


@takes_parameters("predict_distances")
def predict_distances(encoder: ModelBundle, table: biom.Table, sequences: pd.Series,
                      **parameters) -> skbio.DistanceMatrix:
    import torch
    from .core.model import predicted_distance
    from .core.inference import embed as core_embed
    from .core.inputs import refuse_non_finite
    data = _sample_set(encoder, table, sequences)
    _, distance_embeddings = core_embed(encoder, data, device=parameters["device"])
    distances = predicted_distance(torch.from_numpy(distance_embeddings)).numpy().astype(np.float64)
    refuse_non_finite(distances, "distances", data.sample_ids, encoder)
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    return skbio.DistanceMatrix(distances, ids=data.sample_ids)
