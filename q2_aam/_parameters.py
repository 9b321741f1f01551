"""The one table of action parameters: QIIME 2 type, default, description and
where each value goes. plugin_setup.py registers from it and every action's
signature is built from it (`takes_parameters`), so a parameter is one entry.

Destinations: 'model' (a core ModelConfig field), 'train' (a core TrainConfig
field), 'fit' (a keyword of core.supervised.fit) and 'action' (used by the
action itself). Defaults of 'model' and 'train' entries are read from the
core's presets for pretraining or fitting (core/config.py), so the core and the
plugin cannot disagree.
"""
import contextlib
import inspect
import linecache
import os
import sys
from dataclasses import dataclass

import qiime2
from qiime2.plugin import Bool, Choices, Float, Int, Metadata, Range, Str

from .core.unifrac import METRICS as UNIFRAC_METRICS
from .core.config import (MAX_KMER_SIZE, OPTIMIZERS, REGRESSION_LOSS_CHOICES, SCHEDULERS,
                          ModelConfig, TrainConfig, draw_seed)

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Parameter:
    qiime_type: object
    description: str
    destination: str
    default: object = _NO_DEFAULT     # 'model' and 'train' entries: from the core presets
    field: str = None                 # the core's name, where it differs


def _model(qiime_type, description):
    return Parameter(qiime_type, description, "model")


def _train(qiime_type, description, field=None):
    return Parameter(qiime_type, description, "train", field=field)


PARAMETERS = {
    # -- architecture (ModelConfig) --
    "embedding_dim": _model(Int % Range(8, None),
                            "Width of every embedding (ASV, sample). Must be divisible by "
                            "attention_heads."),
    "attention_heads": _model(Int % Range(1, None), "Attention heads in each transformer layer."),
    "attention_layers": _model(Int % Range(1, None),
                               "Transformer layers, in the nucleotide encoder and again in the "
                               "sample encoder."),
    "max_bp": _model(Int % Range(1, None),
                     "Sequences longer than this are truncated (the count is reported)."),
    "asv_limit": _model(Int % Range(1, None),
                        "At most this many ASVs are read per sample: the most abundant are "
                        "kept."),
    "kmer_size": _model(Int % Range(0, MAX_KMER_SIZE, inclusive_end=True),
                        "Length of the k-mers whose learned embeddings are added to each ASV's "
                        "transformer embedding (0: none). They let the fit tell individual "
                        "ASVs apart, which pretrained embeddings do poorly; an ASV never seen "
                        "in training still gets the k-mers it shares with known ones."),
    "ensemble_size": _model(Int % Range(1, None),
                            "Number of models fitted one after the other, each with its own "
                            "seed, validation split and early stopping, and stored as one model "
                            "that answers with their pooled prediction (class or binned-target "
                            "probabilities averaged, other regressions averaged). Training "
                            "takes that many times longer."),
    # -- training run (TrainConfig) --
    "batch_size": _train(Int % Range(2, None),
                         "Samples per batch (at least 2: the UniFrac loss compares pairs)."),
    "epochs": _train(Int % Range(1, None), "Maximum epochs: an epoch is a pass over the training samples "
                     "(several passes when min_epoch_steps asks for more steps)."),
    "learning_rate": _train(Float % Range(0, None, inclusive_start=False),
                            "Peak learning rate of the schedule. Its best value depends on the "
                            "optimizer, the batch size and the model: `qiime aam "
                            "find-learning-rate` suggests one."),
    "weight_decay": _train(Float % Range(0, None),
                           "Weight decay of the weight matrices (biases and norms are not "
                           "decayed): decoupled from the gradient for adamw and lion, an L2 "
                           "penalty added to the gradient for adam and sgd."),
    "optimizer": _train(Str % Choices(list(OPTIMIZERS)),
                        "'adamw': AdamW. 'adam': Adam. 'sgd': SGD with Nesterov momentum 0.9; "
                        "it usually needs a much larger learning rate than the Adam family. "
                        "'lion': Lion (each weight moves by the learning rate, in the direction "
                        "of the sign of a mix of its gradient and momentum; betas 0.9 and "
                        "0.99); it wants a learning rate about 3-10x smaller than AdamW's and a "
                        "weight decay 3-10x larger."),
    "scheduler": _train(Str % Choices(list(SCHEDULERS)),
                        "How the learning rate moves over the optimizer steps of the run. "
                        "'warmup_cosine': linear warmup, then cosine decay to 0. 'cosine': "
                        "cosine decay to 0 from the first step (warmup is not used). "
                        "'constant': linear warmup, then constant. 'plateau': linear warmup, "
                        "then halved whenever the monitored loss (validation, else training) "
                        "has not improved for a third of patience epochs (at least 1). "
                        "'onecycle': one cycle, up from learning_rate / 25 to learning_rate "
                        "over the warmup fraction (0.3 when warmup is 0), then cosine down to "
                        "learning_rate / 250000."),
    "warmup": _train(Float % Range(0, 1),
                     "Fraction of all optimizer steps spent warming the learning rate up "
                     "linearly (or, for onecycle, rising to its peak); a fraction, so it "
                     "always ends on small data."),
    "patience": _train(Int % Range(1, None),
                       "Stop when the monitored loss (validation, else training) has not "
                       "improved for this many epochs; the best epoch's weights are kept."),
    "min_epoch_steps": _train(Int % Range(0, None),
                              "With few training samples an epoch is several passes over "
                              "them, each shuffled anew: as many as make at least this many "
                              "optimizer steps, so that epochs, patience and the learning-rate "
                              "schedule give a small fit time to learn. 0: an epoch is always "
                              "one pass."),
    "validation_fraction": _train(Float % Range(0, 1),
                                  "Fraction of samples held out, seeded by random_state, for "
                                  "early stopping and the reported validation metrics. 0 "
                                  "disables validation (then the training loss is monitored)."),
    "max_grad_norm": _train(Float % Range(0, None, inclusive_start=False),
                            "Gradients are clipped to this global norm."),
    "gradient_accumulation_steps": _train(Int % Range(1, None),
                                          "Batches whose gradients are summed per optimizer "
                                          "step (the scheduler counts optimizer steps)."),
    "nuc_mask_ratio": _train(Float % Range(0, 1),
                             "Fraction of bases masked for the masked-nucleotide loss (0 turns "
                             "it off). Not used when the encoder is frozen."),
    "nuc_penalty": _train(Float % Range(0, None), "Weight of the masked-nucleotide loss."),
    "unifrac_penalty": _train(Float % Range(0, None),
                              "Weight of the UniFrac loss (in the fits: only with "
                              "distance_matrix or phylogeny)."),
    "zero_distance_weight": _train(Float % Range(0, None),
                                   "Weight of sample pairs whose true distance is 0 in the "
                                   "UniFrac loss (1 weighs them like any pair)."),
    "asv_dropout": _train(Float % Range(0, 1),
                          "Fraction of each training sample's ASVs left out of every training "
                          "batch, drawn anew each time (a sample that would lose them all "
                          "keeps its most abundant one); never at validation or prediction. "
                          "It keeps the fit from leaning on single ASVs."),
    "regression_loss": _train(Str % Choices(list(REGRESSION_LOSS_CHOICES)),
                              "Loss on the standardized target: 'l1' (absolute error, fits "
                              "the conditional median), 'huber' (squared within one standard "
                              "deviation, absolute beyond), 'mse' (squared error), 'binned' "
                              "(the model predicts a distribution over quantile bins of the "
                              "training targets, learned by cross-entropy, and answers with its "
                              "median) or 'quantile' (the model predicts the 0.025, 0.05, 0.1, "
                              "0.25, 0.5, 0.75, 0.9, 0.95 and 0.975 quantiles of the target, "
                              "each learned by its pinball loss, and answers with the median). "
                              "'binned' and 'quantile' regressors also give prediction "
                              "intervals (`qiime aam predict-intervals`). 'auto' takes 'l1' "
                              "with a pretrained_encoder and 'mse' without one."),
    "device": _train(Str % Choices(["auto", "cpu", "cuda"]),
                     "'auto' uses a CUDA GPU when torch sees one (bf16 autocast), else the CPU "
                     "(float32)."),
    "random_state": _train(Int,
                           "Seed for initialization, the validation split, shuffling and "
                           "masking: the same seed gives the same model on the same hardware. "
                           "When not given, a seed is drawn, reported, and stored in the "
                           "model.", field="random_seed"),
    # -- keywords of the core's fit --
    "freeze_encoder": Parameter(Bool,
                                "With a pretrained_encoder: keep its nucleotide-level ASV "
                                "encoder fixed, so every distinct ASV is embedded once for the "
                                "whole run and only the sample level and the head train (much "
                                "faster, and the more accurate fit on real data). Without a "
                                "pretrained_encoder it has no effect.", "fit", True),
    "lookup_neighbours": Parameter(Int % Range(0, None),
                                   "Neighbour look-up: where this many fitted samples nearest "
                                   "to a sample (most ASVs shared, matched by sequence) agree "
                                   "on the target, answer with their median instead of the "
                                   "model's prediction. It recovers repeated samples of one "
                                   "host, whose private ASVs a model reading sequences blurs. "
                                   "How closely they must agree is chosen on the validation "
                                   "split, and the look-up stays off when no choice beats the "
                                   "model there (so it needs validation_fraction > 0). The "
                                   "model then stores its fitted samples' ASV sets and "
                                   "targets, and predicting those samples themselves mostly "
                                   "returns their own targets; anyone given the model can read "
                                   "them (`qiime aam strip-lookup` removes them). 0: off, and "
                                   "the model stores no sample's ASVs or target.", "fit", 3),
    "class_weights": Parameter(Str % Choices(["none", "balanced"]),
                               "'balanced' weighs each class inversely to its frequency in the "
                               "training split.", "fit", "none"),
    # -- used by the actions themselves --
    "unifrac_metric": Parameter(Str % Choices(list(UNIFRAC_METRICS)),
                                "UniFrac computed from the phylogeny for each batch: "
                                "'unweighted' (presence) or 'weighted_normalized' "
                                "(abundance-weighted), as q2-diversity defines them. Used "
                                "only with phylogeny.", "action", "unweighted"),
    "covariates": Parameter(Metadata,
                            "Optional sample metadata that conditions the model. A fit uses "
                            "every column, so give only the covariates (e.g. study, sex, body "
                            "site), never the column to predict. Each category of a "
                            "categorical column gets a learned vector, and numeric columns are "
                            "standardized with the training split's mean and standard "
                            "deviation and mapped linearly; both are added to the sample "
                            "embedding before the model's head. A model fitted with "
                            "covariates needs the same columns (others are ignored), for "
                            "every sample, to predict or embed. A missing value is an error. "
                            "A category never seen in "
                            "training is read as the column's 'unknown' category, which "
                            "training learns by reading each training sample's category as "
                            f"unknown {TrainConfig().covariate_unknown_rate:.0%} of the time "
                            "(seeded); prediction reports how many "
                            "samples had unseen categories.", "action", None),
    "missing_samples": Parameter(Str % Choices(["error", "ignore"]),
                                 "'error' if samples are missing from the metadata; 'ignore' "
                                 "to use only the samples that have metadata.", "action",
                                 "error"),
    "n_jobs": Parameter(Int % Range(-1, None),
                        "CPU threads torch may use (-1: all cores). It sets the threads of "
                        "the CPU work also when a GPU trains.", "action", 1),
    "n_devices": Parameter(Int % Range(1, None),
                           "Devices that train the model together, data-parallel: each takes "
                           "its share of every batch (batch_size stays the whole batch, so it "
                           "must be at least n_devices) and the UniFrac loss still compares "
                           "every pair of the batch. On the CPU (gloo): that many worker "
                           "processes, sharing the n_jobs threads between them (at least one "
                           "each). On CUDA "
                           "(NCCL): one GPU each, so at most as many as torch sees. The model "
                           "is the same kind as a one-device run's with the same settings: "
                           "each step's gradient is the one-device gradient up to "
                           "floating-point rounding. In a fit with ensemble_size of 2 or "
                           "more, the members are dealt out instead: each device trains "
                           "whole members by itself, side by side with the others (with 2 "
                           "devices, members 1, 3, 5... on the first and 2, 4, 6... on the "
                           "second), and they are the members one device would train; "
                           "devices left without a member wait. 1: train in this process.",
                           "action", 1),
    "test_size": Parameter(Float % Range(0, 1, inclusive_start=False),
                           "Fraction of samples held out as the test part (seeded by "
                           "random_state; stratified by class for classification).",
                           "action", 0.2),
    "min_learning_rate": Parameter(Float % Range(0, None, inclusive_start=False),
                                   "The learning rate of the first step.", "action", 1e-6),
    "max_learning_rate": Parameter(Float % Range(0, None, inclusive_start=False),
                                   "The learning rate of the last step; the sweep stops "
                                   "earlier if the loss diverges.", "action", 1.0),
    "level": Parameter(Float % Range(0, 1, inclusive_start=False, inclusive_end=False),
                       "Probability that the interval holds the true value: the bounds are "
                       "the (1 - level) / 2 and (1 + level) / 2 quantiles of the predicted "
                       "distribution, calibrated on the fit's validation samples. A "
                       "'quantile' regressor reaches at most 0.95 (the quantiles it predicts "
                       "span 0.025 to 0.975).", "action", 0.9),
    "steps": Parameter(Int % Range(10, None),
                       "Optimizer steps (one batch each) of the sweep; the learning rate grows "
                       "by the same factor at each.", "action", 200),
}

ARCHITECTURE = ("embedding_dim", "attention_heads", "attention_layers", "max_bp", "asv_limit")
TRAINING = ("batch_size", "epochs", "learning_rate", "weight_decay", "optimizer", "scheduler",
            "warmup", "patience", "min_epoch_steps", "validation_fraction", "max_grad_norm",
            "gradient_accumulation_steps", "nuc_mask_ratio", "nuc_penalty", "unifrac_penalty",
            "zero_distance_weight", "unifrac_metric", "device", "random_state", "n_jobs",
            "n_devices")
FIT = ("covariates", "freeze_encoder", "missing_samples", "kmer_size", "asv_dropout", "ensemble_size",
       *ARCHITECTURE, *TRAINING)
APPLY = ("device", "n_jobs")
# Applying a supervised model: with the covariates it was fitted with, if any.
APPLY_SUPERVISED = ("covariates", *APPLY)

# Each action's parameters (in signature order) and the preset its defaults come from.
ACTIONS = {
    "pretrain": ("pretrain", (*ARCHITECTURE, *TRAINING)),
    "fit_regressor": ("fit", (*FIT, "regression_loss", "lookup_neighbours")),
    "fit_classifier": ("fit", (*FIT, "class_weights")),
    "regress_samples": ("fit", ("test_size", *FIT, "regression_loss", "lookup_neighbours")),
    "classify_samples": ("fit", ("test_size", *FIT, "class_weights")),
    "predict": ("fit", APPLY_SUPERVISED),
    "predict_probabilities": ("fit", APPLY_SUPERVISED),
    "predict_intervals": ("fit", ("level", *APPLY_SUPERVISED)),
    "embed": ("fit", APPLY_SUPERVISED),
    "predict_distances": ("fit", APPLY),
    "find_learning_rate": ("fit", ("missing_samples", *ARCHITECTURE, "kmer_size", "batch_size",
                                   "optimizer", "weight_decay", "min_learning_rate",
                                   "max_learning_rate", "steps", "device", "random_state",
                                   "n_jobs")),
    "scatterplot": ("fit", ("missing_samples",)),
    "confusion_matrix": ("fit", ("missing_samples",)),
}


def default(name, preset):
    """The default of parameter `name` in an action of `preset` ('pretrain' or 'fit')."""
    entry = PARAMETERS[name]
    if name == "random_state":
        return None     # as q2-sample-classifier: no seed given, a seed is drawn
    if entry.destination == "model":
        return getattr(ModelConfig.preset(preset), entry.field or name)
    if entry.destination == "train":
        return getattr(TrainConfig.preset(preset), entry.field or name)
    return entry.default


def defaults(action):
    """{parameter: default} of an action."""
    preset, names = ACTIONS[action]
    return {name: default(name, preset) for name in names}


def types(action):
    """{parameter: QIIME 2 type} of an action, for plugin registration."""
    return {name: PARAMETERS[name].qiime_type for name in ACTIONS[action][1]}


def descriptions(action):
    """{parameter: description} of an action, for plugin registration."""
    return {name: PARAMETERS[name].description for name in ACTIONS[action][1]}


def configs(preset, values, **fixed):
    """Split an action's parameter values by destination: (ModelConfig fields,
    TrainConfig fields, fit keywords), each a dict in the core's names.
    `fixed` adds or replaces ModelConfig/TrainConfig fields."""
    routed = {"model": {}, "train": {}, "fit": {}, "action": {}}
    for name, value in values.items():
        entry = PARAMETERS[name]
        routed[entry.destination][entry.field or name] = value
    model_fields = {f for f in ModelConfig.__dataclass_fields__}
    for name, value in fixed.items():
        routed["model" if name in model_fields else "train"][name] = value
    return (ModelConfig.preset(preset, **routed["model"]),
            TrainConfig.preset(preset, **routed["train"]), routed["fit"])


def takes_parameters(action):
    """Give an action function the parameters of `action` from the table, with
    their defaults, after its own inputs. QIIME 2 reads the returned function's
    signature; the body receives every value (defaults filled in) as keywords.
    An action with n_jobs runs with that many torch threads."""
    def decorate(body):
        own = [p for p in inspect.signature(body).parameters.values()
               if p.kind is not p.VAR_KEYWORD]
        # Methods and visualizers annotate their parameters; pipelines must not.
        annotated = any(p.annotation is not p.empty for p in own)
        table = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value,
                                   annotation=_annotation(name, value) if annotated
                                   else inspect.Parameter.empty)
                 for name, value in defaults(action).items()]
        signature = inspect.signature(body).replace(parameters=[*own, *table])

        def run(**values):
            if "n_jobs" not in values:
                return body(**values)
            with torch_threads(values["n_jobs"]):
                return body(**values)
        return _function_with_signature(body, signature, run)
    return decorate


def _function_with_signature(body, signature, call):
    """A real function with `signature` (named and documented as `body`) that
    passes its arguments to `call` by name.

    Why generated, not a wrapper with __signature__: QIIME 2 rebuilds
    visualizers and pipelines without their first argument (output_dir, ctx)
    with the `decorator` package, which copies a wrapper's __dict__ and so its
    __signature__, and then demands the dropped argument.
    """
    names = list(signature.parameters)
    namespace = {"_call": call, "_defaults": {
        p.name: p.default for p in signature.parameters.values() if p.default is not p.empty}}
    arguments = ", ".join(f"{n}=_defaults[{n!r}]" if n in namespace["_defaults"] else n
                          for n in names)
    source = (f"def {body.__name__}({arguments}):\n"
              f"    return _call({', '.join(f'{n}={n}' for n in names)})\n")
    filename = f"<q2_aam action {body.__name__}>"
    exec(compile(source, filename, "exec"), namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    function = namespace[body.__name__]
    function.__annotations__ = {
        **{p.name: p.annotation for p in signature.parameters.values()
           if p.annotation is not p.empty},
        **({"return": signature.return_annotation}
           if signature.return_annotation is not signature.empty else {})}
    function.__doc__, function.__module__ = body.__doc__, body.__module__
    function.__qualname__ = body.__qualname__
    return function


def _annotation(name, value):
    qiime_type = PARAMETERS[name].qiime_type
    base = qiime_type.name if hasattr(qiime_type, "name") else ""
    return {"Int": int, "Float": float, "Str": str, "Bool": bool,
            "Metadata": qiime2.Metadata}.get(
        base, type(value) if value is not None else inspect.Parameter.empty)


# Live TensorBoard logging is an opt-in of whoever runs the process, not an
# action parameter: a parameter would let a Galaxy user write anywhere on the
# server. The event files are always kept inside the model artifact.
TENSORBOARD_ENV = "Q2_AAM_TENSORBOARD_DIR"


def live_tensorboard_dir():
    """The live TensorBoard directory of the environment ('' when unset),
    checked to be writable before any training starts."""
    path = os.environ.get(TENSORBOARD_ENV, "")
    if path:
        from .core.train import check_writable_directory
        check_writable_directory(path, TENSORBOARD_ENV)
    return path


def resolve_seed(random_state):
    """random_state, or a freshly drawn seed (reported) when it is None."""
    if random_state is not None:
        return int(random_state)
    seed = draw_seed()
    print(f"No random_state given: using seed {seed} (pass --p-random-state {seed} to "
          "repeat this run; the model records it).", file=sys.stderr)
    return seed


@contextlib.contextmanager
def torch_threads(n_jobs):
    """torch's CPU threads set to n_jobs (-1: all cores) while an action runs."""
    import torch
    if n_jobs == 0:
        raise ValueError("n_jobs must be a number of threads (1 or more), or -1 for all "
                         "cores; got 0.")
    previous = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) if n_jobs == -1 else n_jobs)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
