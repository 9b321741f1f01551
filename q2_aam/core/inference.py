"""A fitted ModelBundle's answers for the samples of a SampleSet."""
import numpy as np

from .lookup import load_lookup
from .targets import TargetCodec
from .train import predict_outputs, resolve_device


def model_outputs(bundle, data, batch_size=64, device="auto"):
    """The bundle's model run (unmasked) over every sample of `data`."""
    device = resolve_device(device)
    model = bundle.build_model().to(device)
    return predict_outputs(model, data, np.arange(len(data)), batch_size, device)


def decode(task, info, outputs):
    """Model outputs -> (predictions in original units or labels, probabilities or None).

    `info` is the model's task information (target scaling or class labels).
    """
    return TargetCodec.from_info(task, info).decode(outputs["target"])


def model_predictions(bundle, data, batch_size=64, device="auto"):
    """The model's own predictions (and class probabilities) for every sample."""
    return decode(bundle.task, bundle.info, model_outputs(bundle, data, batch_size, device))


def predict(bundle, data, batch_size=64, device="auto", log=None):
    """Predictions (and class probabilities) for every sample of `data`: the
    model's, then, for a regressor fitted with a neighbour look-up, the
    look-up's where a sample's neighbours agree."""
    predicted, probabilities = model_predictions(bundle, data, batch_size, device)
    lookup = load_lookup(bundle)
    if lookup is not None:
        predicted = lookup.apply(data, predicted, log)
    return predicted, probabilities


def embed(bundle, data, batch_size=64, device="auto"):
    """Sample embeddings and distance embeddings for every sample of `data`."""
    out = model_outputs(bundle, data, batch_size, device)
    return out["sample_embeddings"], out["distance_embeddings"]


__all__ = ["model_outputs", "decode", "model_predictions", "predict", "embed"]
