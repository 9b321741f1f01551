"""A fitted ModelBundle's answers for the samples of a SampleSet."""
import numpy as np

from .config import INTERVAL_LOSSES
from .covariates import with_covariates
from .lookup import load_lookup
from .targets import TargetCodec
from .train import predict_outputs, resolve_device


def model_outputs(bundle, data, batch_size=64, device="auto", covariates=None):
    """The bundle's model run (unmasked) over every sample of `data`. A model
    fitted with covariates reads them from `covariates` (a DataFrame indexed by
    sample ID) or from `data` (covariates.with_covariates)."""
    data = with_covariates(bundle, data, covariates)
    device = resolve_device(device)
    model = bundle.build_model().to(device)
    return predict_outputs(model, data, np.arange(len(data)), batch_size, device)


def decode(task, info, outputs):
    """Model outputs -> (predictions in original units or labels, probabilities or None).

    `info` is the model's task information (target scaling or class labels).
    """
    return TargetCodec.from_info(task, info).decode(outputs["target"])


def model_predictions(bundle, data, batch_size=64, device="auto", covariates=None):
    """The model's own predictions (and class probabilities) for every sample."""
    return decode(bundle.task, bundle.info,
                  model_outputs(bundle, data, batch_size, device, covariates))


def predict(bundle, data, batch_size=64, device="auto", log=None, covariates=None):
    """Predictions (and class probabilities) for every sample of `data`: the
    model's, then, for a regressor fitted with a neighbour look-up, the
    look-up's where a sample's neighbours agree."""
    predicted, probabilities = model_predictions(bundle, data, batch_size, device, covariates)
    lookup = load_lookup(bundle)
    if lookup is not None:
        predicted = lookup.apply(data, predicted, log)
    return predicted, probabilities


def predict_intervals(bundle, data, level, batch_size=64, device="auto", covariates=None):
    """(predictions, lower bounds, upper bounds) for every sample of `data`, in
    original units: the median and the central `level` interval of the
    distribution a regressor fitted with an interval loss (config.INTERVAL_LOSSES)
    predicts (covariates as model_outputs reads them). They come from the model
    alone: a neighbour look-up answers with a value, not a distribution.
    ValueError for any other model."""
    check_intervals(bundle)
    codec = TargetCodec.from_info(bundle.task, bundle.info)
    raw = model_outputs(bundle, data, batch_size, device, covariates)["target"]
    predicted, _ = codec.decode(raw)
    lower, upper = codec.intervals(raw, level)
    # Quantiles of one CDF hold its median, unless the calibration moved a bound
    # past it (a model biased on the validation split): keep them around it.
    return predicted, np.minimum(lower, predicted), np.maximum(upper, predicted)


def check_intervals(bundle, level=None):
    """ValueError unless `bundle` is a regressor that predicts a distribution
    (and, given a `level`, one its intervals can reach)."""
    if bundle.task != "regressor":
        raise ValueError(f"Prediction intervals come from a regressor; this model is a "
                         f"{bundle.task}.")
    if not TargetCodec.from_info(bundle.task, bundle.info).predicts_distribution:
        loss = bundle.info.get("training", {}).get("regression_loss", "unknown")
        raise ValueError(
            f"This regressor was fitted with regression_loss {loss!r}, which predicts a single "
            f"value, so it cannot give prediction intervals. Intervals need a regressor "
            f"fitted with regression_loss {' or '.join(map(repr, INTERVAL_LOSSES))}: fit one "
            f"with, e.g., --p-regression-loss quantile.")
    if level is not None:
        TargetCodec.from_info(bundle.task, bundle.info).check_level(level)


def embed(bundle, data, batch_size=64, device="auto", covariates=None):
    """Sample embeddings (with a model's covariates added) and distance
    embeddings for every sample of `data`."""
    out = model_outputs(bundle, data, batch_size, device, covariates)
    return out["sample_embeddings"], out["distance_embeddings"]


__all__ = ["model_outputs", "decode", "model_predictions", "predict", "predict_intervals",
           "check_intervals", "embed"]
