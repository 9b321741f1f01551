"""A trained model with everything needed to use and judge it, on disk as:

config.json        architecture, vocabulary, task information, versions
model.safetensors  the weights (no pickle: loading never runs code)
history.tsv        one row per epoch
validation.tsv     the best epoch's validation predictions (optional)
lookup.safetensors a regressor's neighbour look-up references (optional; lookup.py)
tensorboard/       the run's TensorBoard event files
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import ModelConfig
from .tokenizer import VOCAB_SIZE

# torch is imported inside the methods: the QIIME 2 plugin imports this module
# at start-up, and every `qiime` command loads every plugin.

CONFIG, WEIGHTS, HISTORY, VALIDATION, LOOKUP, EVENTS_DIR = (
    "config.json", "model.safetensors", "history.tsv", "validation.tsv", "lookup.safetensors",
    "tensorboard")
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    model_config: ModelConfig
    state_dict: dict
    history: pd.DataFrame
    # Task information: target scaling, class labels, training parameters, data summary.
    info: dict = field(default_factory=dict)
    validation: pd.DataFrame = None
    event_files: dict = field(default_factory=dict)
    # NeighbourLookup.to_arrays() when the regressor answers from neighbours too.
    lookup: dict = None

    @property
    def task(self):
        return self.model_config.task

    def build_model(self):
        from .model import build_model
        model = build_model(self.model_config)
        # Models saved before the ASV whitening existed lack its buffers; their
        # identity default is exactly how those models ran.
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        if unexpected or set(missing) - {"asv_center", "asv_whitening"}:
            raise ValueError(f"The weights do not match the model configuration: missing "
                             f"{sorted(missing)}, unexpected {sorted(unexpected)}.")
        model.eval()
        return model

    def config_dict(self):
        import safetensors
        import torch
        return {"format_version": FORMAT_VERSION,
                "model": self.model_config.to_dict(),
                "vocabulary_size": VOCAB_SIZE,
                "info": self.info,
                "versions": {"q2_aam": _package_version(), "torch": torch.__version__,
                             "safetensors": safetensors.__version__}}

    def save(self, directory):
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG), "w") as fh:
            json.dump(self.config_dict(), fh, indent=2, sort_keys=True)
        # safetensors refuses shared or non-contiguous storage; copies are cheap here.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict.items()},
                  os.path.join(directory, WEIGHTS))
        self.history.to_csv(os.path.join(directory, HISTORY), sep="\t", index=False)
        if self.validation is not None:
            self.validation.to_csv(os.path.join(directory, VALIDATION), sep="\t", index=False)
        if self.lookup is not None:
            from safetensors.numpy import save_file as save_arrays
            save_arrays({k: np.ascontiguousarray(v) for k, v in self.lookup.items()},
                        os.path.join(directory, LOOKUP))
        for name, content in self.event_files.items():
            path = os.path.join(directory, EVENTS_DIR, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(content)

    @classmethod
    def load(cls, directory):
        from safetensors.torch import load_file
        config = read_config(os.path.join(directory, CONFIG))
        state_dict = load_file(os.path.join(directory, WEIGHTS))
        history = pd.read_csv(os.path.join(directory, HISTORY), sep="\t")
        validation_path = os.path.join(directory, VALIDATION)
        validation = (pd.read_csv(validation_path, sep="\t", dtype={"sample_id": str})
                      if os.path.exists(validation_path) else None)
        events = read_files(os.path.join(directory, EVENTS_DIR))
        lookup_path = os.path.join(directory, LOOKUP)
        lookup = None
        if os.path.exists(lookup_path):
            from safetensors.numpy import load_file as load_arrays
            lookup = load_arrays(lookup_path)
        return cls(ModelConfig.from_dict(config["model"]), state_dict, history,
                   config.get("info", {}), validation, events, lookup)


def read_files(directory):
    """Every file below `directory` as {relative path: bytes} ({} if it is absent)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, directory)] = fh.read()
    return files


def read_config(path):
    """Parse and check config.json; ValueError naming the file on any problem."""
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{os.path.basename(path)} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{os.path.basename(path)} lacks the 'model' section.")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{os.path.basename(path)} has format_version "
                         f"{config.get('format_version')!r}; this q2-aam reads {FORMAT_VERSION}.")
    try:
        ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{os.path.basename(path)} holds an invalid model configuration: {err}") from err
    return config


def check_weights(path):
    """Read the safetensors header and every tensor; ValueError naming the file if corrupt."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as fh:
            for key in fh.keys():
                fh.get_tensor(key)
    except Exception as err:   # safetensors raises several unrelated types
        raise ValueError(f"{os.path.basename(path)} is not a readable safetensors file: {err}") from err


def _package_version():
    try:
        from importlib.metadata import version
        return version("q2-aam")
    except Exception:
        return "unknown"


__all__ = ["ModelBundle", "read_config", "check_weights", "read_files"]
