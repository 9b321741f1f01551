import biom
import pandas as pd
import skbio

from .core.bundle import ModelBundle
from ._inputs import attach_alpha, attach_unifrac, build_sample_set, log
from ._parameters import configs, live_tensorboard_dir, resolve_seed, takes_parameters


@takes_parameters("pretrain")
def pretrain(table: biom.Table, sequences: pd.Series,
             distance_matrix: skbio.DistanceMatrix = None, phylogeny: skbio.TreeNode = None,
             faith_pd: pd.Series = None, **parameters) -> ModelBundle:
    # torch loads only when an action runs: every `qiime` call imports every plugin.
    from .core.pretrain import pretrain as core_pretrain

    model_cfg, train_cfg, _ = configs(
        "pretrain", parameters, task="encoder", faith_pd=faith_pd is not None,
        random_seed=resolve_seed(parameters["random_state"]),
        tensorboard_dir=live_tensorboard_dir())
    data = build_sample_set(table, sequences, model_cfg.max_bp, model_cfg.asv_limit)
    attach_unifrac(data, distance_matrix, phylogeny, parameters["unifrac_metric"],
                   required=True)
    if faith_pd is not None:
        data.faith_pd = attach_alpha(data, faith_pd, "faith_pd")
    check_split_size(len(data), train_cfg.batch_size, train_cfg.validation_fraction)
    log(f"Pretraining on {len(data)} samples and {len(data.feature_ids)} features.")
    return core_pretrain(data, model_cfg, train_cfg, log)


def check_split_size(n_samples, batch_size, validation_fraction):
    n_val = int(round(validation_fraction * n_samples))
    n_train = n_samples - n_val
    if validation_fraction == 0 and n_train < 2:
        raise ValueError(
            f"{n_samples} sample(s) are too few: training needs at least 2 samples. Use more "
            "samples (only samples with counts, and in a fit only those with a value in the "
            "metadata column, are used).")
    if n_train < 2 or (validation_fraction > 0 and n_val < 2):
        # Without validation, 2 samples suffice; with fewer, only more samples help.
        alternative = " or set validation_fraction to 0" if n_samples >= 2 else ""
        raise ValueError(
            f"{n_samples} samples are too few for validation_fraction={validation_fraction}: "
            f"training needs at least 2 samples ({n_train} left) and validation at least 2 "
            f"({n_val}). Use more samples{alternative}.")
