"""The AAM model: a nucleotide transformer per ASV, a set transformer per sample.

Shapes: U distinct ASVs in a batch, T tokens per ASV, B samples, N ASV slots per
sample (padded to the largest sample of the batch), D embedding size.
"""

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .tokenizer import A, PAD, VOCAB_SIZE


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.attention_heads
        self.qkv = nn.Linear(cfg.embedding_dim, 3 * cfg.embedding_dim)
        self.proj = nn.Linear(cfg.embedding_dim, cfg.embedding_dim)
        self.dropout = cfg.dropout

    def forward(self, x, key_mask):
        # x: [B, L, D]; key_mask: [B, L] True where a real token sits.
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embedding_dim
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x, key_mask):
        x = x + self.attn(self.ln1(x), key_mask)
        return x + self.mlp(self.ln2(x))


class AttentionPool(nn.Module):
    """Masked softmax over positions. Padded positions get the dtype's most
    negative value rather than -inf, so even an all-padding row stays finite."""

    def __init__(self, d):
        super().__init__()
        self.score = nn.Linear(d, 1)

    def forward(self, x, mask):
        scores = self.score(x).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("bl,bld->bd", weights, x)


class ASVEncoder(nn.Module):
    """Reads one ASV's tokens, returns its embedding and its per-token states."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embedding_dim
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d)
        self.position_embedding = nn.Embedding(cfg.max_bp + 1, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.attention_layers))
        self.ln = nn.LayerNorm(d)
        self.pool = AttentionPool(d)

    def forward(self, tokens):
        mask = tokens != PAD
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        attn_mask = _never_empty(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln(x)
        return self.pool(x, mask), x


class KmerBag(nn.Module):
    """Sum of learned embeddings of an ASV's overlapping k-mers, read from its
    tokens (k-mers holding a masked or ambiguous base are skipped).

    Why: a fit needs to tell individual ASVs apart (the strains of one host),
    which frozen pretrained embeddings do poorly; k-mers shared by few ASVs give
    every sequence directions of its own, and an unseen ASV still gets the
    k-mers it shares with known ones. A sum, not a mean: under Adam a mean over
    ~100 k-mers moves 100x slower and, measured, had barely left zero when early
    stopping ended the fit. Zero at initialization, so adding it leaves a
    pretrained model's function unchanged.
    """

    def __init__(self, k, d):
        super().__init__()
        self.k = k
        self.table = nn.EmbeddingBag(4 ** k + 1, d, mode="sum", padding_idx=4 ** k)
        nn.init.zeros_(self.table.weight)

    def forward(self, tokens):
        codes = tokens.long() - A                     # bases -> 0..3, anything else outside
        if codes.shape[1] < self.k:
            codes = F.pad(codes, (0, self.k - codes.shape[1]), value=-1)
        windows = codes.unfold(1, self.k, 1)          # [U, T - k + 1, k]
        valid = ((windows >= 0) & (windows < 4)).all(-1)
        powers = 4 ** torch.arange(self.k - 1, -1, -1, device=tokens.device)
        index = torch.where(valid, (windows.clamp(0, 3) * powers).sum(-1), 4 ** self.k)
        return self.table(index)


class SampleEncoder(nn.Module):
    """Reads the unordered set of a sample's ASVs with their abundances.

    There is deliberately no slot position embedding: a sample is a set, and the
    row order of a feature table must not matter.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embedding_dim
        self.abundance = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.attention_layers))
        self.ln = nn.LayerNorm(d)
        self.pool = AttentionPool(d)

    def forward(self, asv_embeddings, log_abundance, mask):
        x = asv_embeddings + self.abundance(log_abundance.unsqueeze(-1).to(asv_embeddings.dtype))
        attn_mask = _never_empty(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.pool(self.ln(x), mask)


class CovariateEmbedding(nn.Module):
    """What a sample's covariates add to its pooled embedding: the sum of a
    learned vector per category of each categorical column (codes index one
    table that holds every column's categories and 'unknown', covariates.py)
    and a linear map of the standardized numeric columns.

    Added to the pooled embedding, not given to the sample transformer as an
    extra token: a category then shifts what the heads read directly (an age
    offset per study is one vector), whereas a token would compete with up to
    asv_limit ASVs for the attention pool's weight; and the ASV set, the
    UniFrac-trained distance embeddings and data-parallel sharding stay as
    they were. Zero at initialization, so a fit on a pretrained encoder starts
    from the function it would have without covariates.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embedding_dim
        self.categories = (nn.EmbeddingBag(cfg.covariate_categories, d, mode="sum")
                           if cfg.covariate_categories else None)
        self.numeric = (nn.Linear(cfg.covariate_numeric, d, bias=False)
                        if cfg.covariate_numeric else None)

    def zero_(self):
        for layer in (self.categories, self.numeric):
            if layer is not None:
                nn.init.zeros_(layer.weight)
        return self

    def forward(self, batch):
        """[B, D] float32: the covariates' shift of each sample's embedding."""
        if batch.covariate_codes is None or batch.covariate_values is None:
            raise ValueError("This model was fitted with covariates and needs them for every "
                             "sample (covariates.with_covariates attaches them).")
        shift = 0.0
        if self.categories is not None:
            shift = shift + self.categories(batch.covariate_codes)
        if self.numeric is not None:
            shift = shift + self.numeric(batch.covariate_values.float())
        return shift


class AAMModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.asv_encoder = ASVEncoder(cfg)
        self.kmer_bag = KmerBag(cfg.kmer_size, d) if cfg.kmer_size else None
        self.sample_encoder = SampleEncoder(cfg)
        self.nuc_head = nn.Linear(d, VOCAB_SIZE)
        self.distance_head = nn.Linear(d, d)
        # Learned scale of embedding distances: at initialization sample
        # embeddings are close together, and a fixed scale would start every
        # prediction near 0 and leave it there for many steps.
        self.distance_log_scale = nn.Parameter(torch.tensor(2.0))
        self.faith_pd_head = nn.Linear(d, 1) if cfg.faith_pd else None
        self.target_head = (nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.n_outputs))
                            if cfg.task != "encoder" else None)
        self.covariates = (CovariateEmbedding(cfg)
                           if cfg.covariate_categories or cfg.covariate_numeric else None)
        # A fixed affine map of ASV embeddings, identity unless a fit on a
        # pretrained encoder sets it (transfer.whiten_asv_embeddings).
        self.register_buffer("asv_center", torch.zeros(d))
        self.register_buffer("asv_whitening", torch.eye(d))
        self.apply(_init_weights)
        if self.covariates is not None:
            self.covariates.zero_()

    def encode_asvs(self, tokens):
        """[U, T] tokens -> ([U, D] ASV embeddings, [U, T, D] token states)."""
        embeddings, states = self.asv_encoder(tokens)
        # In float32 even under bf16 autocast: whitening magnifies the small axes.
        with torch.autocast(tokens.device.type, enabled=False):
            embeddings = (embeddings.float() - self.asv_center) @ self.asv_whitening
        return embeddings, states

    def encode_samples(self, asv_embeddings, asv_index, log_abundance, mask):
        """Scatter the distinct-ASV embeddings back into their samples, then pool.

        asv_embeddings [U, D]; asv_index [B, N] indexes into U.
        """
        return self.sample_encoder(asv_embeddings[asv_index], log_abundance, mask)

    def forward(self, batch):
        """Returns the sample embeddings, plus what the batch asks for."""
        out = {}
        if batch.asv_embeddings is not None:       # frozen, precomputed ASV embeddings
            asv_emb = batch.asv_embeddings
        else:
            asv_emb, states = self.encode_asvs(batch.tokens)
            if batch.nuc_index is not None:
                # Only masked positions reach the head: cheaper, and the loss is
                # defined on them alone.
                out["nuc_logits"] = self.nuc_head(states.flatten(0, 1)[batch.nuc_index])
        if self.kmer_bag is not None:
            asv_emb = asv_emb + self.kmer_bag(batch.tokens)
        sample_emb = self.encode_samples(asv_emb, batch.asv_index, batch.log_abundance,
                                         batch.asv_mask)
        # The heads run in float32 even under bf16 autocast (they are tiny): UniFrac
        # distances between samples differ by less than bf16's ~3 significant
        # digits resolve in the embeddings they are computed from.
        with torch.autocast(sample_emb.device.type, enabled=False):
            sample_emb = sample_emb.float()
            # UniFrac and Faith PD describe the community alone: read before the
            # covariates condition what the target head (and `embed`) reads.
            out["distance_embeddings"] = (self.distance_head(sample_emb)
                                          * self.distance_log_scale.exp())
            if self.faith_pd_head is not None:
                out["faith_pd"] = self.faith_pd_head(sample_emb).squeeze(-1)
            if self.covariates is not None:
                sample_emb = sample_emb + self.covariates(batch)
            out["sample_embeddings"] = sample_emb
            if self.target_head is not None:
                out["target"] = self.target_head(sample_emb)
        return out


class Ensemble(nn.Module):
    """`cfg.ensemble_size` AAMModels fitted independently (each its own seed and
    validation split), answering as one.

    Probabilities (of classes, or of a binned regression's target bins) are
    averaged: the prediction is the members' mixture. Scalar regressions and
    predicted quantiles are averaged. Embeddings are concatenated, since members' spaces need not align.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(AAMModel(cfg) for _ in range(cfg.ensemble_size))
        # Members fitted on one frozen encoder share its ASV embeddings; they are
        # then computed once per batch, not once per member. Set on loading.
        self.shared_asv_encoder = False

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        first = self.members[0]
        self.shared_asv_encoder = all(
            torch.equal(a, b) for member in self.members[1:]
            for a, b in zip(_asv_encoding_tensors(first), _asv_encoding_tensors(member)))
        return result

    def forward(self, batch):
        if self.shared_asv_encoder and batch.asv_embeddings is None:
            batch = replace(batch, asv_embeddings=self.members[0].encode_asvs(batch.tokens)[0])
        outs = [member(batch) for member in self.members]
        out = {key: torch.cat([o[key] for o in outs], -1)
               for key in ("sample_embeddings", "distance_embeddings")}
        targets = torch.stack([o["target"] for o in outs])
        if self.cfg.task == "classifier" or (self.cfg.n_outputs > 1
                                             and not self.cfg.quantile_outputs):
            # Log of the mean probability: decoding takes a softmax of it.
            out["target"] = (torch.logsumexp(torch.log_softmax(targets, -1), 0)
                             - math.log(len(outs)))
        else:
            out["target"] = targets.mean(0)
        return out


def _asv_encoding_tensors(model):
    """What a member's ASV embeddings are computed from."""
    return [*model.asv_encoder.state_dict().values(), model.asv_center, model.asv_whitening]


def build_model(cfg: ModelConfig):
    """The model a configuration describes: one AAMModel, or an Ensemble of them."""
    return Ensemble(cfg) if cfg.ensemble_size > 1 else AAMModel(cfg)


def predicted_distance(distance_embeddings):
    """Bounded, smooth map from embedding distance to a UniFrac-like value.

    d = RMS difference of the two embeddings; prediction = 1 - exp(-d) lies in
    [0, 1) and its gradient exp(-d) never vanishes the way a clamp's does.
    """
    diff = distance_embeddings[:, None, :] - distance_embeddings[None, :, :]
    rms = torch.sqrt(diff.pow(2).mean(-1) + 1e-8)
    return 1.0 - torch.exp(-rms)


def _never_empty(mask):
    """A row with no real position would make attention divide by zero; let such
    a row attend everywhere instead (its output is never used)."""
    return mask | ~mask.any(-1, keepdim=True)


def _init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


__all__ = ["AAMModel", "Ensemble", "build_model", "predicted_distance", "count_parameters"]
