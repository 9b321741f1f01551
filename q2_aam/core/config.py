"""Configuration dataclasses for the model and for a training run.

Pretraining and supervised fits differ in a few defaults; `ModelConfig.preset`
and `TrainConfig.preset` hold them, and the QIIME 2 actions take their defaults
from the same presets (q2_aam/_parameters.py), so there is one place to change one.
"""
from dataclasses import asdict, dataclass, fields

TASKS = ("encoder", "regressor", "classifier")
# Defined here (no torch) so that the plugin can offer them as choices; built in optim.py.
OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
REGRESSION_LOSSES = ("mse", "huber", "l1", "binned", "quantile")
# Losses whose regressors predict a distribution, and so prediction intervals.
INTERVAL_LOSSES = ("binned", "quantile")
# Points (evenly spaced over [0, 1]) at which a model keeps its interval calibration.
CALIBRATION_POINTS = 101
MAX_KMER_SIZE = 8     # a table of 4**8 k-mers; longer ones would mostly be unique
SCHEDULERS = ("warmup_cosine", "cosine", "plateau", "onecycle", "constant")
# 'auto': 'l1' on a pretrained encoder, 'mse' from scratch (supervised.resolve_regression_loss).
REGRESSION_LOSS_CHOICES = ("auto", *REGRESSION_LOSSES)
PRESETS = ("pretrain", "fit")

# Where a fit's defaults differ from pretraining's. Measured (BENCHMARKS.md):
# fits on a pretrained encoder want a 10x lower peak learning rate; masking
# kept from-scratch regressors from learning; 6-mer embeddings and ASV dropout
# 0.5 lowered held-out age error of frozen fits on oral-dev.
FIT_MODEL_DEFAULTS = {"kmer_size": 6}
FIT_TRAINING_DEFAULTS = {"learning_rate": 3e-4, "nuc_mask_ratio": 0.0, "asv_dropout": 0.5,
                         "regression_loss": "auto", "min_epoch_steps": 20}


def _preset_overrides(kind, fit_defaults):
    if kind not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, not {kind!r}")
    return fit_defaults if kind == "fit" else {}


@dataclass
class ModelConfig:
    embedding_dim: int = 128
    attention_heads: int = 4
    attention_layers: int = 4
    max_bp: int = 150
    asv_limit: int = 1024
    dropout: float = 0.0
    task: str = "encoder"
    # Regressor: 1; classifier: number of classes; encoder: unused.
    n_outputs: int = 0
    faith_pd: bool = False
    # Length of the k-mers whose learned embeddings are added to each ASV's
    # (model.KmerBag); 0: none.
    kmer_size: int = 0
    # Supervised models: independently fitted members answering as one (model.Ensemble).
    ensemble_size: int = 1
    # A regressor's several outputs are quantiles of the target (the 'quantile'
    # loss: an ensemble averages them), not the logits of the 'binned' loss's
    # bins (an ensemble averages their probabilities).
    quantile_outputs: bool = False
    # Supervised models fitted with covariates (covariates.py): rows of the
    # category table (each categorical column's categories and its 'unknown')
    # and the number of numeric columns; 0: none.
    covariate_categories: int = 0
    covariate_numeric: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.embedding_dim % self.attention_heads:
            raise ValueError(
                f"embedding_dim ({self.embedding_dim}) must be divisible by "
                f"attention_heads ({self.attention_heads}).")
        for name in ("embedding_dim", "attention_heads", "attention_layers",
                     "max_bp", "asv_limit", "ensemble_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if not 0 <= self.kmer_size <= MAX_KMER_SIZE:
            raise ValueError(f"kmer_size must be 0 (none) to {MAX_KMER_SIZE}, not {self.kmer_size}.")

    @classmethod
    def preset(cls, kind, **overrides):
        """The configuration 'pretrain' or 'fit' starts from, with `overrides`."""
        return cls(**{**_preset_overrides(kind, FIT_MODEL_DEFAULTS), **overrides})

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig:
    """A training run; the field defaults are pretraining's (see `preset`)."""
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    scheduler: str = "warmup_cosine"
    warmup: float = 0.05          # fraction of all optimizer steps
    patience: int = 10
    # With few samples a pass over them is a step or two, so an epoch repeats
    # passes until it makes this many optimizer steps (train.epoch_batches).
    min_epoch_steps: int = 0
    validation_fraction: float = 0.1
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    nuc_mask_ratio: float = 0.15
    regression_loss: str = "mse"
    # Fraction of each training sample's ASVs left out of every training batch:
    # a regularizer against memorizing single ASVs (not for pretraining, whose
    # UniFrac targets describe the whole sample).
    asv_dropout: float = 0.0
    # Rate at which a training batch reads a sample's covariate category as its
    # column's 'unknown' (covariates.py), so that unknown learns an answer for
    # categories never seen in training.
    covariate_unknown_rate: float = 0.1
    nuc_penalty: float = 1.0
    unifrac_penalty: float = 1.0
    # Weight of sample pairs whose true distance is 0 in the UniFrac loss.
    zero_distance_weight: float = 1.0
    faith_pd_penalty: float = 1.0
    device: str = "auto"
    random_seed: int = 0
    tensorboard_dir: str = ""
    log_every: int = 10           # steps between host syncs (progress bar, finiteness)

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 2, "at least 2 (UniFrac needs sample pairs)"),
            ("learning_rate", self.learning_rate > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("optimizer", self.optimizer in OPTIMIZERS, _one_of(OPTIMIZERS)),
            ("scheduler", self.scheduler in SCHEDULERS, _one_of(SCHEDULERS)),
            ("warmup", 0 <= self.warmup < 1, "in [0, 1): a fraction of the run"),
            ("patience", self.patience >= 1, "at least 1"),
            ("min_epoch_steps", self.min_epoch_steps >= 0, "non-negative"),
            ("validation_fraction", 0 <= self.validation_fraction < 1, "in [0, 1)"),
            ("max_grad_norm", self.max_grad_norm > 0, "positive"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "at least 1"),
            ("nuc_mask_ratio", 0 <= self.nuc_mask_ratio < 1, "in [0, 1)"),
            ("asv_dropout", 0 <= self.asv_dropout < 1, "in [0, 1)"),
            ("covariate_unknown_rate", 0 <= self.covariate_unknown_rate < 1, "in [0, 1)"),
            ("regression_loss", self.regression_loss in REGRESSION_LOSS_CHOICES,
             _one_of(REGRESSION_LOSS_CHOICES)),
            ("nuc_penalty", self.nuc_penalty >= 0, "non-negative"),
            ("unifrac_penalty", self.unifrac_penalty >= 0, "non-negative"),
            ("zero_distance_weight", self.zero_distance_weight >= 0,
             "non-negative (0 leaves zero-distance pairs out of the UniFrac loss)"),
            ("device", self.device in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}; got {getattr(self, name)!r}.")

    @classmethod
    def preset(cls, kind, **overrides):
        """The run 'pretrain' or 'fit' starts from, with `overrides`."""
        return cls(**{**_preset_overrides(kind, FIT_TRAINING_DEFAULTS), **overrides})

    def to_dict(self):
        return asdict(self)


def draw_seed():
    """A fresh random_seed, from the operating system's entropy, in [0, 2**31)."""
    import numpy as np
    return int(np.random.SeedSequence().generate_state(1)[0] % 2 ** 31)


def _one_of(choices):
    return "one of " + ", ".join(repr(c) for c in choices)
