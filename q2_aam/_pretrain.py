import biom
import pandas as pd
import skbio

from .core.bundle import ModelBundle
from ._inputs import attach_alpha, attach_distances, build_sample_set, log


def pretrain(table: biom.Table, sequences: pd.Series, distance_matrix: skbio.DistanceMatrix,
             faith_pd: pd.Series = None, embedding_dim: int = 128, attention_heads: int = 4,
             attention_layers: int = 4, max_bp: int = 150, asv_limit: int = 1024,
             batch_size: int = 32, epochs: int = 100, learning_rate: float = 3e-3,
             weight_decay: float = 0.01, optimizer: str = "adamw",
             scheduler: str = "warmup_cosine", warmup: float = 0.05, patience: int = 10,
             validation_fraction: float = 0.1, max_grad_norm: float = 1.0,
             gradient_accumulation_steps: int = 1, nuc_mask_ratio: float = 0.15,
             nuc_penalty: float = 1.0, unifrac_penalty: float = 1.0,
             zero_distance_weight: float = 1.0, device: str = "auto", random_seed: int = 0,
             tensorboard_dir: str = None) -> ModelBundle:
    # torch loads only when an action runs: every `qiime` call imports every plugin.
    from .core.config import ModelConfig, TrainConfig
    from .core.pretrain import pretrain as core_pretrain

    model_cfg = ModelConfig(embedding_dim=embedding_dim, attention_heads=attention_heads,
                            attention_layers=attention_layers, max_bp=max_bp, asv_limit=asv_limit,
                            task="encoder", faith_pd=faith_pd is not None)
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                            weight_decay=weight_decay, optimizer=optimizer,
                            scheduler=scheduler, warmup=warmup, patience=patience,
                            validation_fraction=validation_fraction, max_grad_norm=max_grad_norm,
                            gradient_accumulation_steps=gradient_accumulation_steps,
                            nuc_mask_ratio=nuc_mask_ratio, nuc_penalty=nuc_penalty,
                            unifrac_penalty=unifrac_penalty, device=device,
                            random_seed=random_seed, tensorboard_dir=tensorboard_dir or "")
    data = build_sample_set(table, sequences, max_bp, asv_limit)
    attach_distances(data, distance_matrix)
    if faith_pd is not None:
        data.faith_pd = attach_alpha(data, faith_pd, "faith_pd")
    check_split_size(len(data), batch_size, validation_fraction)
    log(f"Pretraining on {len(data)} samples and {len(data.feature_ids)} features.")
    return core_pretrain(data, model_cfg, train_cfg, zero_distance_weight, log)


def check_split_size(n_samples, batch_size, validation_fraction):
    n_val = int(round(validation_fraction * n_samples))
    n_train = n_samples - n_val
    if n_train < 2 or (validation_fraction > 0 and n_val < 2):
        raise ValueError(
            f"{n_samples} samples are too few for validation_fraction={validation_fraction}: "
            f"training needs at least 2 samples ({n_train} left) and validation at least 2 "
            f"({n_val}). Use more samples or set validation_fraction to 0.")
