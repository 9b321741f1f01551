"""Encoder transfer: a supervised fit that starts from a pretrained encoder.

The fit takes the encoder's architecture and its weights (less its heads), and
whitens the ASV embeddings the encoder gives the fit's ASVs. With the encoder
frozen, every distinct ASV is embedded once for the whole run, so training
costs only the sample level.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .config import ModelConfig

# A fraction of the total variance added to each axis before whitening (see
# whiten_asv_embeddings).
WHITENING_RIDGE = 1e-3
ENCODER_HEADS = ("target_head", "faith_pd_head")


def transferred_config(encoder, model_cfg, fit_choices):
    """The fit's ModelConfig: the encoder's architecture, with `fit_choices`
    (task, outputs, ensemble size) and `model_cfg`'s dropout and k-mer size."""
    return ModelConfig.from_dict({**encoder.model_config.to_dict(), **fit_choices,
                                  "faith_pd": False,
                                  # dropout regularizes this fit; not architecture
                                  "dropout": model_cfg.dropout,
                                  "kmer_size": model_cfg.kmer_size})


@dataclass
class EncoderTransfer:
    """What each member of a fit takes from a pretrained encoder."""
    weights: dict                    # the encoder's state dict, less what the fit learns anew
    freeze: bool                     # the nucleotide-level ASV encoder stays fixed
    whitening_ridge: Optional[float] = WHITENING_RIDGE   # None: no whitening (an ablation)

    @classmethod
    def from_encoder(cls, encoder, kmer_size, freeze, whitening_ridge=WHITENING_RIDGE):
        """The encoder's weights but its heads; its k-mer embeddings only when the
        fit's k-mer size is the encoder's (other sizes start them afresh)."""
        skipped = ENCODER_HEADS + (("kmer_bag.",) if kmer_size != encoder.model_config.kmer_size
                                   else ())
        weights = {k: v for k, v in encoder.state_dict.items() if not k.startswith(skipped)}
        return cls(weights, bool(freeze), whitening_ridge)

    def start(self, model, data, device):
        """Load the weights into `model` and whiten its ASV embeddings on `data`'s
        ASVs. Returns the SampleSet to train on: `data`, with the frozen
        encoder's ASV embeddings when it is frozen."""
        model.load_state_dict(self.weights, strict=False)
        if self.whitening_ridge is None:
            embeddings = embed_all_asvs(model, data, device)
        else:
            embeddings = whiten_asv_embeddings(model, data, device, self.whitening_ridge)
        self._freeze(model)
        return data.replace(asv_embedding_table=embeddings) if self.freeze else data

    def start_like(self, model, first):
        """Load the weights into `model` with the `first` member's whitening: the
        same encoder and ASVs give the same one."""
        model.load_state_dict(self.weights, strict=False)
        model.asv_center.copy_(first.asv_center)
        model.asv_whitening.copy_(first.asv_whitening)
        self._freeze(model)

    def _freeze(self, model):
        if self.freeze:
            model.asv_encoder.requires_grad_(False)


@torch.no_grad()
def whiten_asv_embeddings(model, data, device, ridge=WHITENING_RIDGE):
    """Set the model's fixed ASV whitening from the pretrained embeddings of the
    training ASVs: centred, rotated to principal axes and scaled to unit variance.

    Why: a UniFrac-pretrained encoder places ASVs along few directions (on
    oral-dev three principal components carry 90% of the variance), so what
    tells related ASVs apart is tiny next to the phylogenetic axes and a fit
    learns it slowly. `ridge` (a fraction of the total variance added to each
    axis) keeps near-empty directions from being blown up into noise.

    Returns the whitened embeddings of `data`'s ASVs on the CPU, the same values
    `encode_asvs` now gives them (a frozen fit's embedding table).
    """
    d = model.asv_whitening.shape[0]
    model.asv_center.zero_()
    model.asv_whitening.copy_(torch.eye(d))
    raw = embed_all_asvs(model, data, device)
    embeddings = raw.double()
    center = embeddings.mean(0)
    centred = embeddings - center
    variance, axes = torch.linalg.eigh(centred.T @ centred / len(embeddings))
    variance = variance.clamp_min(0)
    if variance.sum() == 0:       # a single ASV: nothing to whiten
        return raw
    scale = (variance + ridge * variance.sum()).rsqrt()
    center, whitening = center.float(), (axes @ torch.diag(scale) @ axes.T).float()
    model.asv_center.copy_(center)
    model.asv_whitening.copy_(whitening)
    return (raw - center) @ whitening


@torch.no_grad()
def embed_all_asvs(model, data, device, chunk=512):
    """Embed every distinct ASV of `data` once (for a frozen encoder), `chunk`
    ASVs at a time; returns the table on the CPU.

    In a process group every rank calls this: each embeds a contiguous share of
    the chunks and every rank gets the whole table, each chunk computed as one
    process computes it.
    """
    from . import distributed
    from .train import autocast
    model.to(device).eval()
    starts = np.arange(0, len(data.tokens), chunk)
    mine = np.array_split(starts, distributed.world_size())[distributed.rank()]
    parts = []
    for start in mine:
        tokens = torch.from_numpy(data.tokens[start:start + chunk].astype(np.int64)).to(device)
        with autocast(device):
            parts.append(model.encode_asvs(tokens)[0].float().cpu())
    share = {"embeddings": torch.cat(parts).numpy()} if parts else {}
    return torch.from_numpy(distributed.gather_outputs(share)["embeddings"])


__all__ = ["EncoderTransfer", "transferred_config", "whiten_asv_embeddings", "embed_all_asvs",
           "WHITENING_RIDGE"]
