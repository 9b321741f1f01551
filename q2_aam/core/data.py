"""Samples as sets of ASV indices, and batches built around distinct ASVs.

Sequences are tokenized once per run. A batch encodes each distinct ASV
sequence once, however many of its samples hold it, and pads samples only to
the largest sample in the batch.
"""
import copy
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import scipy.sparse
import torch

from .tokenizer import MASK, NUCLEOTIDES, PAD, tokenize
from .unifrac import DenseDistances


@dataclass
class Batch:
    sample_index: torch.Tensor            # [B] rows of the SampleSet
    asv_index: torch.Tensor               # [B, N] into the batch's distinct ASVs
    asv_mask: torch.Tensor                # [B, N] True for real ASV slots
    log_abundance: torch.Tensor           # [B, N]
    tokens: Optional[torch.Tensor] = None           # [U, T] distinct ASVs' tokens
    nuc_positions: Optional[torch.Tensor] = None    # [U, T] masked positions
    nuc_targets: Optional[torch.Tensor] = None      # [M] true tokens there
    # The same positions as flat indices into [U * T], found on the host: gathering
    # by a boolean mask on a GPU would make the host wait for the device.
    nuc_index: Optional[torch.Tensor] = None        # [M]
    asv_embeddings: Optional[torch.Tensor] = None   # [U, D] when the encoder is frozen
    distances: Optional[torch.Tensor] = None        # [B, B]
    faith_pd: Optional[torch.Tensor] = None         # [B]
    targets: Optional[torch.Tensor] = None          # [B]
    covariate_codes: Optional[torch.Tensor] = None  # [B, C] rows of the category table
    covariate_values: Optional[torch.Tensor] = None  # [B, V] standardized numeric covariates

    def to(self, device):
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    @property
    def size(self):
        return self.sample_index.shape[0]


class SampleSet:
    """A feature table reduced to what the model reads.

    Each sample keeps its `asv_limit` most abundant features (ties broken by
    table column, so the result never depends on row order of the input).
    `counts` keeps the whole table (CSR, every feature of each sample), which
    is what UniFrac from a tree reads.

    A batch's distances come from `distances`: set it to an [n, n] matrix (rows
    and columns in sample order; reading it back gives that matrix) or to any
    object with `submatrix(indices) -> [k, k] float32`, such as
    unifrac.TreeDistances(tree, data.feature_ids, data.counts).
    """

    def __init__(self, counts, sample_ids, feature_ids, sequences, max_bp, asv_limit):
        counts = scipy.sparse.csr_matrix(counts)
        self.counts = counts                # [n, n_features], all features of each sample
        self.sample_ids = list(sample_ids)
        self.feature_ids = list(feature_ids)
        self.sequences = [sequences[f] for f in self.feature_ids]   # whole, untruncated DNA
        self.tokens, self.n_truncated = tokenize(self.sequences, max_bp)
        self.asv_ids, self.log_abundance = [], []
        self.n_capped = 0
        for row in range(counts.shape[0]):
            start, end = counts.indptr[row], counts.indptr[row + 1]
            cols, vals = counts.indices[start:end], counts.data[start:end].astype(np.float64)
            keep = vals > 0
            cols, vals = cols[keep], vals[keep]
            order = np.lexsort((cols, -vals))[:asv_limit]
            self.n_capped += int(len(vals) > asv_limit)
            self.asv_ids.append(cols[order].astype(np.int64))
            self.log_abundance.append(np.log(vals[order] / vals.sum()).astype(np.float32))
        self.distance_source = None   # submatrix(indices) -> [k, k] float32; see `distances`
        self.faith_pd = None        # [n] float32
        self.targets = None         # [n] float32 or int64
        self.asv_embedding_table = None   # [n_features, D] torch, frozen encoder
        self.covariates = None      # covariates.CovariateValues of the samples

    @classmethod
    def from_biom(cls, table, sequences, max_bp, asv_limit):
        """A feature table as a SampleSet. `table` is a biom.Table, or any object
        with its `matrix_data` (features x samples, scipy.sparse) and
        `ids(axis='sample' | 'observation')`; `sequences` maps feature IDs to DNA.

        Features without counts are left out. Samples without counts (they have
        nothing to read) and features without a sequence are refused.
        """
        features = scipy.sparse.csr_matrix(table.matrix_data)     # features x samples
        sample_ids = list(table.ids(axis="sample"))
        kept = np.asarray(features.sum(1)).ravel() > 0
        feature_ids = [f for f, keep in zip(table.ids(axis="observation"), kept) if keep]
        counts = features[np.flatnonzero(kept)].T.tocsr()
        empty = np.asarray((counts > 0).sum(1)).ravel() == 0
        if empty.any():
            raise ValueError(f"{int(empty.sum())} sample(s) have no counts (e.g. "
                             f"{sample_ids[np.flatnonzero(empty)[0]]!r}); leave them out of the "
                             "table first.")
        missing = [f for f in feature_ids if f not in sequences]
        if missing:
            raise ValueError(f"{len(missing)} feature(s) with counts have no sequence (e.g. "
                             f"{missing[0]!r}); give the sequences of every feature.")
        return cls(counts, sample_ids, feature_ids, sequences, max_bp, asv_limit)

    def replace(self, **attributes):
        """A shallow copy with `attributes` (say targets, asv_embedding_table or
        distances) replaced: what one run adds to a set stays out of the caller's."""
        unknown = sorted(name for name in attributes if not hasattr(self, name))
        if unknown:
            raise AttributeError(f"SampleSet has no attribute(s) {unknown}.")
        changed = copy.copy(self)
        for name, value in attributes.items():
            setattr(changed, name, value)
        return changed

    def __len__(self):
        return len(self.sample_ids)

    @property
    def distances(self):
        """The [n, n] float32 matrix when distances were given as one; otherwise
        the distance source itself (None when there are no distances)."""
        if isinstance(self.distance_source, DenseDistances):
            return self.distance_source.matrix
        return self.distance_source

    @distances.setter
    def distances(self, value):
        if value is not None and not hasattr(value, "submatrix"):
            value = DenseDistances(value)
        if hasattr(value, "__len__") and len(value) != len(self):
            raise ValueError(f"The distances cover {len(value)} samples; this set has {len(self)}.")
        self.distance_source = value

    def occurrences(self, indices):
        return int(sum(len(self.asv_ids[i]) for i in indices))

    def collate(self, indices, mask_ratio=0.0, rng=None, asv_dropout=0.0, unknown_rate=0.0):
        """Build a Batch of the samples `indices` (positions in this set).

        `asv_dropout` leaves out that fraction of each sample's ASVs at random
        (`rng`); a sample that would lose them all keeps its most abundant one.
        `unknown_rate` reads that fraction of the samples' covariate categories
        as their column's 'unknown' (`rng`; drawn only when there are covariates).
        """
        indices = np.asarray(indices)
        ids = [self.asv_ids[i] for i in indices]
        log_abundances = [self.log_abundance[i] for i in indices]
        if asv_dropout > 0:
            keeps = [rng.random(len(x)) >= asv_dropout for x in ids]
            for keep in keeps:
                keep[0] |= not keep.any()      # ASVs are stored most abundant first
            ids = [x[keep] for x, keep in zip(ids, keeps)]
            log_abundances = [x[keep] for x, keep in zip(log_abundances, keeps)]
        distinct, inverse = np.unique(np.concatenate(ids), return_inverse=True)
        n_slots = max(len(x) for x in ids)
        asv_index = np.zeros((len(ids), n_slots), dtype=np.int64)
        asv_mask = np.zeros((len(ids), n_slots), dtype=bool)
        log_abundance = np.zeros((len(ids), n_slots), dtype=np.float32)
        offset = 0
        for row, x in enumerate(ids):
            asv_index[row, :len(x)] = inverse[offset:offset + len(x)]
            asv_mask[row, :len(x)] = True
            log_abundance[row, :len(x)] = log_abundances[row]
            offset += len(x)
        batch = Batch(sample_index=torch.from_numpy(indices.astype(np.int64)),
                      asv_index=torch.from_numpy(asv_index),
                      asv_mask=torch.from_numpy(asv_mask),
                      log_abundance=torch.from_numpy(log_abundance))
        tokens = self.tokens[distinct]
        tokens = tokens[:, :int((tokens != PAD).sum(1).max())]
        if self.asv_embedding_table is not None:
            batch.asv_embeddings = self.asv_embedding_table[torch.from_numpy(distinct)]
            batch.tokens = torch.from_numpy(tokens.astype(np.int64))   # for the k-mer bag
        else:
            if mask_ratio > 0:
                tokens, positions, targets = mask_nucleotides(tokens, mask_ratio, rng)
                batch.nuc_positions = torch.from_numpy(positions)
                batch.nuc_index = torch.from_numpy(np.flatnonzero(positions))
                batch.nuc_targets = torch.from_numpy(targets.astype(np.int64))
            batch.tokens = torch.from_numpy(tokens.astype(np.int64))
        if self.distance_source is not None:
            batch.distances = torch.from_numpy(self.distance_source.submatrix(indices))
        if self.faith_pd is not None:
            batch.faith_pd = torch.from_numpy(self.faith_pd[indices])
        if self.targets is not None:
            batch.targets = torch.from_numpy(self.targets[indices])
        if self.covariates is not None:
            batch.covariate_codes, batch.covariate_values = self.covariates.rows(
                indices, rng, unknown_rate)
        return batch


def mask_nucleotides(tokens, ratio, rng):
    """BERT-style masking of base positions (never the start token or padding):
    of the chosen positions 80% become MASK, 10% a random base, 10% stay."""
    eligible = tokens >= NUCLEOTIDES[0]
    positions = eligible & (rng.random(tokens.shape) < ratio)
    targets = tokens[positions]
    masked = tokens.copy()
    roll = rng.random(len(targets))
    replacement = np.where(roll < 0.8, MASK, targets)
    random_base = rng.choice(np.array(NUCLEOTIDES, dtype=np.uint8), size=len(targets))
    replacement = np.where((roll >= 0.8) & (roll < 0.9), random_base, replacement)
    masked[positions] = replacement
    return masked, positions, targets


def batch_indices(indices, batch_size, rng=None):
    """Split `indices` (shuffled when `rng` is given) into batches of at least
    two samples: a last batch of one joins the batch before it."""
    indices = np.array(indices)
    if rng is not None:
        indices = indices[rng.permutation(len(indices))]
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        last = chunks.pop()      # pop first: `chunks[-2] = f(chunks.pop())` hits the wrong slot
        chunks[-1] = np.concatenate([chunks[-1], last])
    return chunks


def split_indices(n, validation_fraction, rng, strata=None):
    """Seeded split of range(n) into (train, validation), stratified if `strata`."""
    if validation_fraction == 0:
        return np.arange(n), np.arange(0)
    groups = [np.arange(n)] if strata is None else [
        np.flatnonzero(strata == s) for s in np.unique(strata)]
    val = []
    for group in groups:
        group = group[rng.permutation(len(group))]
        n_val = int(round(validation_fraction * len(group)))
        if strata is not None:
            n_val = max(1, n_val)
        val.extend(group[:n_val])
    val = np.sort(np.array(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


__all__ = ["Batch", "SampleSet", "mask_nucleotides", "batch_indices", "split_indices"]
