import biom
import pandas as pd
import skbio

from .core.bundle import ModelBundle
from .core.inputs import attach_alpha, attach_unifrac, build_sample_set, check_split_size, log
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
    check_split_size(len(data), train_cfg.validation_fraction)
    log(f"Pretraining on {len(data)} samples and {len(data.feature_ids)} features.")
    # One device: core_pretrain runs here. More: worker processes, which log
    # to stderr themselves (a `log` function cannot cross into them).
    from .core.distributed import train_distributed
    return train_distributed(core_pretrain, parameters["n_devices"], data, model_cfg,
                             train_cfg, log=log)
