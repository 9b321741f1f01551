"""A trained model with everything needed to use and judge it, on disk as:

config.json        architecture, vocabulary, task information, versions
model.safetensors  the weights (no pickle: loading never runs code)
history.tsv        one row per epoch
validation.tsv     the best epoch's validation predictions (optional)
lookup.safetensors a regressor's neighbour look-up references (optional; lookup.py)
tensorboard/       the run's TensorBoard event files

Loading checks that the files agree with each other (every tensor the
configuration needs, of its shape, in float32 and finite; task information that
fits the model's head; consistent look-up arrays), so that a loaded model either
answers or was refused with a message naming the file and the problem.
`check_answers` goes one step further and runs the model on a made-up sample
(QIIME 2's validation at level 'max').
"""
import csv
import json
import math
import os
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from .config import CALIBRATION_POINTS, TASKS, ModelConfig
from .tokenizer import VOCAB_SIZE

# torch is imported inside the functions: the QIIME 2 plugin imports this module
# at start-up, and every `qiime` command loads every plugin.

CONFIG, WEIGHTS, HISTORY, VALIDATION, LOOKUP, EVENTS_DIR = (
    "config.json", "model.safetensors", "history.tsv", "validation.tsv", "lookup.safetensors",
    "tensorboard")
FORMAT_VERSION = 1
# info key of a regressor whose look-up references were removed (privacy.strip_lookup).
LOOKUP_STRIPPED = "lookup_stripped"
# Models saved before the ASV whitening existed lack its buffers; their identity
# default is exactly how those models ran.
OPTIONAL_TENSORS = {"asv_center", "asv_whitening"}
# Deeper JSON than this is no configuration q2-aam wrote (and deep enough nesting
# would exhaust Python's recursion when the model is saved again).
MAX_JSON_DEPTH = 32
MAX_SIZE = 2 ** 31 - 1         # any integer of the model configuration
LOOKUP_ARRAYS = {"digests": (np.uint8, 2), "indptr": (np.int64, 1), "indices": (np.int64, 1),
                 "targets": (np.float64, 1)}
VALIDATION_COLUMNS = {"encoder": ("sample_a", "sample_b", "true", "predicted"),
                      "regressor": ("sample_id", "true", "predicted"),
                      "classifier": ("sample_id", "true", "predicted")}
REMEDY = ("Use the model as q2-aam saved it (re-import the original files or re-fit the "
          "model); hand-edited model files are refused.")


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
        check_weights_match(self.model_config, self.state_dict)
        model = build_model(self.model_config)
        model.load_state_dict(self.state_dict, strict=False)
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
        """Read a saved model; ValueError naming the file and the problem when its
        files are unreadable or disagree (see the module docstring)."""
        config = read_config(os.path.join(directory, CONFIG))
        model_config = ModelConfig.from_dict(config["model"])
        info = config.get("info", {})
        check_info(model_config, info)
        state_dict = read_weights(os.path.join(directory, WEIGHTS))
        check_weights_match(model_config, state_dict)
        history = read_table(os.path.join(directory, HISTORY), ("epoch",))
        validation_path = os.path.join(directory, VALIDATION)
        validation = None
        if os.path.exists(validation_path):
            validation = read_table(validation_path, VALIDATION_COLUMNS[model_config.task],
                                    dtype={"sample_id": str})
        lookup_path = os.path.join(directory, LOOKUP)
        lookup = None
        if os.path.exists(lookup_path):
            lookup = read_lookup(lookup_path)
            check_lookup(model_config, info, lookup)
        events = read_files(os.path.join(directory, EVENTS_DIR))
        return cls(model_config, state_dict, history, info, validation, events, lookup)


def read_files(directory):
    """Every file below `directory` as {relative path: bytes} ({} if it is absent)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, directory)] = fh.read()
    return files


# --- config.json ------------------------------------------------------------------------


def read_config(path):
    """Parse and check config.json; ValueError naming the file on any problem."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except RecursionError as err:
        raise ValueError(f"{name} is nested too deeply to be a model configuration.") from err
    except (OSError, ValueError) as err:    # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"{name} is not valid JSON: {err}") from err
    if _json_depth(config) > MAX_JSON_DEPTH:
        raise ValueError(f"{name} is nested more than {MAX_JSON_DEPTH} levels deep; a model "
                         f"configuration is not. {REMEDY}")
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{name} lacks the 'model' section.")
    if config.get("format_version") != FORMAT_VERSION or isinstance(
            config.get("format_version"), bool):
        raise ValueError(f"{name} has format_version "
                         f"{config.get('format_version')!r}; this q2-aam reads {FORMAT_VERSION}.")
    vocabulary = config.get("vocabulary_size", VOCAB_SIZE)
    if vocabulary != VOCAB_SIZE or isinstance(vocabulary, bool):
        raise ValueError(f"{name} has vocabulary_size {vocabulary!r}; this q2-aam's tokenizer "
                         f"has {VOCAB_SIZE} tokens.")
    if not isinstance(config.get("info", {}), dict):
        raise ValueError(f"{name}: 'info' must be a JSON object, not "
                         f"{_json_type(config['info'])}. {REMEDY}")
    try:
        check_model_section(config["model"])
        ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError, ArithmeticError) as err:   # attention_heads 0: modulo by 0
        raise ValueError(f"{name} holds an invalid model configuration: {err}") from err
    return config


def check_model_section(section):
    """The 'model' section's values have ModelConfig's types and sane ranges
    (missing ones take ModelConfig's defaults, as in models saved before they
    existed)."""
    if not isinstance(section, dict):
        raise TypeError(f"'model' must be a JSON object, not {_json_type(section)}.")
    for f in fields(ModelConfig):
        if f.name not in section:
            continue
        value = section[f.name]
        if f.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and \
                0 <= value <= MAX_SIZE
            wanted = f"an integer from 0 to {MAX_SIZE}"
        elif f.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value)
            wanted = "a finite number"
        else:
            ok = isinstance(value, f.type)
            wanted = {bool: "true or false", str: "a string"}.get(f.type, f.type.__name__)
        if not ok:
            raise TypeError(f"{f.name} must be {wanted}, not {_describe(value)}.")
    if "task" in section and section["task"] not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {_describe(section['task'])}.")
    if section.get("attention_heads", 1) < 1:     # before ModelConfig divides by it
        raise ValueError(f"attention_heads must be at least 1, not {section['attention_heads']}.")
    if not 0 <= section.get("dropout", 0.0) < 1:
        raise ValueError(f"dropout must be in [0, 1), not {section['dropout']!r}.")


def _json_depth(value):
    """Nesting depth of parsed JSON, without recursion."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [child for item in level
                 for child in (item.values() if isinstance(item, dict) else
                               item if isinstance(item, list) else ())]
    return depth - 1


def _json_type(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _describe(value):
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) \
        else repr(value)
    return text if len(text) <= 40 else f"{_json_type(value)} ({text[:37]}...)"


# --- task information ---------------------------------------------------------------------


def check_info(model_config, info):
    """The task information a prediction reads is complete and fits the head:
    a regressor's target scaling (and bin centers, one per output), a
    classifier's labels (one per output)."""
    task, n_outputs = model_config.task, model_config.n_outputs
    if not isinstance(info, dict):
        raise ValueError(f"{CONFIG}: 'info' must be a JSON object. {REMEDY}")
    if task == "encoder" and model_config.ensemble_size != 1:
        raise ValueError(f"{CONFIG} describes an encoder ensemble (ensemble_size "
                         f"{model_config.ensemble_size}); encoders are single models. {REMEDY}")
    if task == "regressor":
        scaling = info.get("target_scaling")
        if not (isinstance(scaling, dict) and _is_number(scaling.get("mean"))
                and _is_number(scaling.get("std")) and scaling["std"] > 0):
            raise ValueError(
                f"{CONFIG}: a regressor's info needs 'target_scaling' with a finite 'mean' and "
                f"a positive, finite 'std' (the units its predictions are given in); it has "
                f"{_describe(scaling)}. {REMEDY}")
        check_quantile_levels(model_config, info)
        check_interval_calibration(info)
        bins = info.get("target_bins")
        if bins is None and "target_quantile_levels" not in info and n_outputs != 1:
            raise ValueError(f"{CONFIG}: the regressor has {n_outputs} outputs but no "
                             f"'target_bins' to read them as; a plain regressor has 1. {REMEDY}")
        if bins is not None:
            if not (isinstance(bins, list) and len(bins) >= 2 and all(map(_is_number, bins))
                    and all(a < b for a, b in zip(bins, bins[1:]))):
                raise ValueError(f"{CONFIG}: 'target_bins' must be a list of at least 2 finite "
                                 f"numbers in increasing order. {REMEDY}")
            if len(bins) != n_outputs:
                raise ValueError(f"{CONFIG}: 'target_bins' holds {len(bins)} bin centers but the "
                                 f"model has {n_outputs} outputs; they must match. {REMEDY}")
    if task == "classifier":
        classes = info.get("classes")
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                and len(set(classes)) == len(classes) and len(classes) >= 2):
            raise ValueError(f"{CONFIG}: a classifier's info needs 'classes', a list of at "
                             f"least 2 distinct labels (strings); it has {_describe(classes)}. "
                             f"{REMEDY}")
        if len(classes) != n_outputs:
            raise ValueError(f"{CONFIG}: 'classes' names {len(classes)} labels but the model "
                             f"has {n_outputs} outputs; they must match. {REMEDY}")
    stripped = info.get(LOOKUP_STRIPPED, {"references_removed": 0})
    if not (isinstance(stripped, dict) and set(stripped) == {"references_removed"}
            and isinstance(stripped["references_removed"], int)
            and not isinstance(stripped["references_removed"], bool)
            and stripped["references_removed"] >= 0):
        raise ValueError(f"{CONFIG}: '{LOOKUP_STRIPPED}' must be an object holding "
                         f"'references_removed', a non-negative integer; it is "
                         f"{_describe(stripped)}. {REMEDY}")
    from .covariates import check_covariate_info
    try:
        check_covariate_info(model_config, info)
    except ValueError as err:
        raise ValueError(f"{CONFIG}: {err}. {REMEDY}") from err


def check_interval_calibration(info):
    """A binned or quantile regressor's interval calibration (targets.calibration_info):
    CALIBRATION_POINTS probabilities rising from 0 to 1, and the number of
    validation samples behind them."""
    calibration = info.get("interval_calibration")
    if calibration is None:
        return
    if "target_bins" not in info and "target_quantile_levels" not in info:
        raise ValueError(f"{CONFIG}: 'interval_calibration' goes with a regressor that "
                         f"predicts a distribution ('target_bins' or "
                         f"'target_quantile_levels'). {REMEDY}")
    points = calibration.get("probabilities") if isinstance(calibration, dict) else None
    samples = calibration.get("validation_samples") if isinstance(calibration, dict) else None
    if not (isinstance(points, list) and len(points) == CALIBRATION_POINTS
            and all(map(_is_number, points)) and points[0] == 0 and points[-1] == 1
            and all(a <= b for a, b in zip(points, points[1:]))
            and isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1):
        raise ValueError(f"{CONFIG}: 'interval_calibration' must hold 'probabilities', "
                         f"{CALIBRATION_POINTS} numbers rising from 0 to 1, and "
                         f"'validation_samples', a positive integer; it holds "
                         f"{_describe(calibration)}. {REMEDY}")


def check_quantile_levels(model_config, info):
    """A 'quantile' regressor's levels: one per output, increasing, inside (0, 1),
    symmetric around the median they include (its point prediction); and only
    with quantile outputs."""
    levels = info.get("target_quantile_levels")
    if (levels is not None) != model_config.quantile_outputs:
        raise ValueError(f"{CONFIG}: 'target_quantile_levels' go with a model whose "
                         f"quantile_outputs is true, and only with one. {REMEDY}")
    if levels is None:
        return
    if not (isinstance(levels, list) and len(levels) >= 3 and all(map(_is_number, levels))
            and all(0 < q < 1 for q in levels) and all(a < b for a, b in zip(levels, levels[1:]))
            and 0.5 in levels
            and all(math.isclose(a + b, 1.0) for a, b in zip(levels, reversed(levels)))):
        raise ValueError(f"{CONFIG}: 'target_quantile_levels' must be increasing numbers "
                         f"between 0 and 1, symmetric around the 0.5 they include; they are "
                         f"{_describe(levels)}. {REMEDY}")
    if "target_bins" in info:
        raise ValueError(f"{CONFIG}: a regressor predicts bins or quantiles, not both; its "
                         f"info holds 'target_bins' and 'target_quantile_levels'. {REMEDY}")
    if len(levels) != model_config.n_outputs:
        raise ValueError(f"{CONFIG}: 'target_quantile_levels' holds {len(levels)} levels but "
                         f"the model has {model_config.n_outputs} outputs; they must match. "
                         f"{REMEDY}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


# --- model.safetensors ----------------------------------------------------------------------


def check_weights(path, read_tensors=True):
    """Read the safetensors header (and, with `read_tensors`, every tensor);
    ValueError naming the file if it is corrupt."""
    from safetensors import safe_open
    try:
        # Reading tensors needs torch (numpy lacks bfloat16); the header does not.
        with safe_open(path, framework="pt" if read_tensors else "numpy") as fh:
            for key in fh.keys():
                fh.get_tensor(key) if read_tensors else fh.get_slice(key).get_shape()
    except Exception as err:   # safetensors raises several unrelated types
        raise _unreadable(path, err) from err


def read_weights(path):
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except Exception as err:   # safetensors raises several unrelated types
        raise _unreadable(path, err) from err


def _unreadable(path, err):
    return ValueError(f"{os.path.basename(path)} is not a readable safetensors file: {err}")


def expected_shapes(model_config):
    """{tensor name: shape} of the model `model_config` describes, built on
    torch's meta device (no memory, no initialization)."""
    import torch
    from .model import build_model
    with torch.device("meta"):
        model = build_model(model_config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_weights_match(model_config, state_dict):
    """The weights are exactly the tensors `model_config` describes: every name,
    shape and dtype (float32), and finite. Nothing is cast: a model whose weights
    would have to be converted is not the model that was fitted."""
    import torch
    # Every layer of every member holds tensors: a configuration describing far
    # more layers than there are tensors is refused before building anything.
    if model_config.attention_layers * model_config.ensemble_size > len(state_dict):
        raise ValueError(
            f"{WEIGHTS} holds {len(state_dict)} tensors, far fewer than the "
            f"{model_config.attention_layers} attention layers x {model_config.ensemble_size} "
            f"member(s) that {CONFIG} describes need. {REMEDY}")
    try:
        expected = expected_shapes(model_config)
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as err:
        raise ValueError(f"{CONFIG} describes a model that cannot be built: {err}. "
                         f"{REMEDY}") from err
    missing = sorted(set(expected) - set(state_dict) - OPTIONAL_TENSORS)
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        parts = ([f"lack {len(missing)} tensor(s) the configuration needs ({_few(missing)})"]
                 if missing else []) + \
                ([f"hold {len(extra)} tensor(s) the configuration has no place for "
                  f"({_few(extra)})"] if extra else [])
        raise ValueError(f"The weights ({WEIGHTS}) do not match the model configuration "
                         f"({CONFIG}): they {' and '.join(parts)}. {REMEDY}")
    wrong_shape = [f"{name} is {list(state_dict[name].shape)}, not {list(shape)}"
                   for name, shape in expected.items()
                   if name in state_dict and tuple(state_dict[name].shape) != shape]
    if wrong_shape:
        raise ValueError(f"The weights ({WEIGHTS}) do not match the model configuration "
                         f"({CONFIG}): {len(wrong_shape)} tensor(s) have another shape "
                         f"({'; '.join(wrong_shape[:3])}). {REMEDY}")
    wrong_dtype = [f"{name} is {str(t.dtype).replace('torch.', '')}"
                   for name, t in state_dict.items() if t.dtype != torch.float32]
    if wrong_dtype:
        raise ValueError(f"{WEIGHTS}: q2-aam models hold float32 weights, and "
                         f"{len(wrong_dtype)} tensor(s) do not ({'; '.join(wrong_dtype[:3])}); "
                         f"converting them would give another model. {REMEDY}")
    non_finite = [name for name, t in state_dict.items() if not torch.isfinite(t).all()]
    if non_finite:
        raise ValueError(f"{WEIGHTS} holds NaN or infinite weights (in {_few(non_finite)}): the "
                         "model cannot answer. Re-fit it (a fit that diverged: try a lower "
                         "learning_rate).")


def _few(names, n=3):
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(map(repr, names[:n])) + more


# --- history.tsv, validation.tsv ----------------------------------------------------------


def read_table(path, required_columns, dtype=None):
    """A tab-separated table with (at least) `required_columns`; ValueError naming
    the file when it cannot be read as one."""
    name = os.path.basename(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=dtype, encoding="utf-8")
    except (ValueError, csv.Error, OverflowError) as err:   # pandas' parser errors included
        raise ValueError(f"{name} is not a readable tab-separated table: {err}. "
                         f"{REMEDY}") from err
    absent = [c for c in required_columns if c not in table.columns]
    if absent:
        raise ValueError(f"{name} lacks the column(s) {', '.join(absent)}. {REMEDY}")
    return table


# --- lookup.safetensors ---------------------------------------------------------------------


def read_lookup(path):
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except Exception as err:   # safetensors raises several unrelated types
        raise _unreadable(path, err) from err


def check_lookup(model_config, info, arrays):
    """The neighbour look-up's arrays hold a CSR presence matrix of references x
    ASVs, one digest per ASV and one finite target per reference (lookup.py), and
    info holds its settings."""
    def refuse(problem):
        raise ValueError(f"{LOOKUP}: {problem}. {REMEDY}")

    if model_config.task != "regressor":
        refuse(f"only a regressor answers from neighbours, and this model is a "
               f"{model_config.task}")
    if LOOKUP_STRIPPED in info:
        refuse(f"{CONFIG} records that the look-up references were removed "
               f"('{LOOKUP_STRIPPED}'), yet the model holds them")
    if set(arrays) != set(LOOKUP_ARRAYS):
        refuse(f"it must hold exactly the arrays {', '.join(sorted(LOOKUP_ARRAYS))}; it holds "
               f"{', '.join(sorted(arrays)) or 'none'}")
    for name, (dtype, ndim) in LOOKUP_ARRAYS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != ndim:
            refuse(f"'{name}' must be a {ndim}-dimensional {np.dtype(dtype).name} array, not "
                   f"{arrays[name].ndim}-dimensional {arrays[name].dtype.name}")
    digests, indptr, indices, targets = (arrays[k] for k in
                                         ("digests", "indptr", "indices", "targets"))
    if digests.shape[1] != 16:
        refuse(f"'digests' must hold 16 bytes per ASV, not {digests.shape[1]}")
    if len(targets) == 0 or not np.isfinite(targets).all():
        refuse("'targets' must hold at least one reference, every value finite")
    if len(indptr) != len(targets) + 1 or indptr[0] != 0 or indptr[-1] != len(indices) \
            or (np.diff(indptr) < 0).any():
        refuse(f"'indptr' must rise from 0 to the {len(indices)} 'indices' in "
               f"{len(targets) + 1} steps (one per reference, plus one)")
    if len(indices) and (indices.min() < 0 or indices.max() >= len(digests)):
        refuse(f"'indices' must point at the {len(digests)} ASV 'digests'")
    settings = info.get("neighbour_lookup")
    if not (isinstance(settings, dict) and isinstance(settings.get("neighbours"), int)
            and not isinstance(settings["neighbours"], bool) and settings["neighbours"] >= 1
            and _is_number(settings.get("tolerance")) and settings["tolerance"] >= 0):
        refuse(f"{CONFIG}'s info needs 'neighbour_lookup' with 'neighbours' (a positive "
               f"integer) and 'tolerance' (a non-negative number) for it")


# --- does it answer? ------------------------------------------------------------------------


def check_answers(bundle):
    """Run `bundle` on a made-up sample of two ASVs and check that every answer
    (embeddings, prediction, class probabilities, neighbour look-up) is finite.
    ValueError otherwise."""
    from .data import SampleSet
    from .inference import embed, predict
    cfg = bundle.model_config
    sequences = {"probe_a": "ACGT" * 40, "probe_b": "TTGCA" * 32}
    data = SampleSet(np.array([[5.0, 2.0]]), ["probe"], list(sequences), sequences,
                     cfg.max_bp, cfg.asv_limit)
    from .covariates import CovariateCodec, with_covariates
    codec = CovariateCodec.from_info(bundle.info)
    if codec is not None:
        data = with_covariates(bundle, data, codec.probe_frame(data.sample_ids))
    answers = dict(zip(("sample embeddings", "distance embeddings"),
                       embed(bundle, data, device="cpu")))
    if bundle.task != "encoder":
        predicted, probabilities = predict(bundle, data, device="cpu")
        answers["class probabilities" if bundle.task == "classifier" else "prediction"] = \
            probabilities if bundle.task == "classifier" else predicted
    for what, values in answers.items():
        if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
            raise ValueError(f"The model answers a test sample with non-finite {what} (NaN or "
                             f"infinite): its weights are damaged. Re-fit the model.")


def _package_version():
    try:
        from importlib.metadata import version
        return version("q2-aam")
    except Exception:
        return "unknown"


__all__ = ["ModelBundle", "read_config", "check_weights", "read_files", "check_answers",
           "check_weights_match", "check_info", "check_lookup"]
