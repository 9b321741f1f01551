"""Neighbour look-up: a regressor's answer taken from the training samples that
share most of a sample's ASVs, where those samples agree.

Why: microbiome studies often sample one host many times, and a host keeps its
own strains. Exact ASV overlap (Jaccard) finds a host's other samples; a model
reading sequences places near-identical ASVs side by side and blurs exactly
that. Where the nearest training samples agree on the target (one host, or
hosts of one age), their median is the better answer; where they disagree the
model's answer stands. How close "agree" must be is chosen on the validation
split, and no look-up at all is among the choices.

This module owns the look-up: fitting it (fit_lookup), keeping it in a
ModelBundle (store_lookup: its arrays go to lookup.safetensors, its settings
to info["neighbour_lookup"]; load_lookup) and applying it to a model's
predictions (NeighbourLookup.apply). ASVs are matched by a digest of their
sequence, computed only here.
"""
import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse

# Candidate tolerances, in standard deviations of the training targets: the
# neighbours agree when their targets span no more than this.
TOLERANCES = (0.0, 0.05, 0.1, 0.2, 0.4)
INFO_KEY = "neighbour_lookup"      # where a ModelBundle's info keeps the settings
_CHUNK = 1024       # query samples per similarity block (memory: CHUNK x references)


def sequence_digests(sequences):
    """[n, 16] uint8 digests of DNA sequences (case-insensitive): ASVs are
    matched by sequence, never by their feature IDs."""
    digests = [hashlib.blake2b(s.upper().encode(), digest_size=16).digest() for s in sequences]
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 16)


@dataclass
class NeighbourLookup:
    digests: np.ndarray                   # [V, 16] the references' distinct ASVs
    presence: scipy.sparse.csr_matrix     # [R, V] 1 where a reference holds an ASV
    targets: np.ndarray                   # [R] reference targets, original units
    neighbours: int
    tolerance: float = 0.0                # original units (choose_tolerance)

    @classmethod
    def from_samples(cls, data, indices, targets, neighbours, tolerance=0.0):
        """References: the samples `indices` of SampleSet `data`, with `targets`
        (one per index, original units)."""
        used = np.unique(np.concatenate([data.asv_ids[i] for i in indices]))
        position = np.full(len(data.feature_ids), -1, dtype=np.int64)
        position[used] = np.arange(len(used))
        presence = _presence([position[data.asv_ids[i]] for i in indices], len(used))
        return cls(sequence_digests([data.sequences[i] for i in used]), presence,
                   np.asarray(targets, dtype=np.float64), int(neighbours), float(tolerance))

    def neighbour_targets(self, data, indices=None):
        """[n, neighbours] targets of the nearest references of `data`'s samples
        (`indices`, default all) by Jaccard similarity of their ASV sets,
        nearest first (ties: reference order); NaN for a reference sharing no ASV."""
        indices = range(len(data)) if indices is None else indices
        vocabulary = {d.tobytes(): k for k, d in enumerate(self.digests)}
        known = np.array([vocabulary.get(d.tobytes(), -1)
                          for d in sequence_digests(data.sequences)], dtype=np.int64)
        rows = [known[data.asv_ids[i]] for i in indices]
        sizes = np.array([len(r) for r in rows], dtype=np.float64)
        query = _presence([r[r >= 0] for r in rows], len(self.digests))
        reference_sizes = np.asarray(self.presence.sum(1), dtype=np.float64).ravel()
        k = min(self.neighbours, self.presence.shape[0])
        nearest = []
        for start in range(0, len(rows), _CHUNK):
            shared = (query[start:start + _CHUNK] @ self.presence.T).toarray()
            union = sizes[start:start + _CHUNK, None] + reference_sizes[None, :] - shared
            similarity = shared / np.maximum(union, 1)
            order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            targets = self.targets[order]
            # A reference sharing no ASV is no neighbour: NaN never agrees.
            targets[np.take_along_axis(similarity, order, 1) == 0] = np.nan
            nearest.append(targets)
        return np.concatenate(nearest) if nearest else np.zeros((0, k))

    def answer(self, neighbour_targets, predictions):
        """agreed_answer with the chosen tolerance."""
        return agreed_answer(neighbour_targets, predictions, self.tolerance)

    def apply(self, data, predictions, log=None):
        """A model's `predictions` for `data`'s samples, each replaced by its
        neighbours' median where they agree."""
        answered, agree = self.answer(self.neighbour_targets(data), predictions)
        if log is not None:
            log(f"{int(agree.sum())} of {len(agree)} sample(s) answered by the neighbour "
                "look-up.")
        return answered

    def to_arrays(self):
        return {"digests": self.digests, "indptr": self.presence.indptr.astype(np.int64),
                "indices": self.presence.indices.astype(np.int64), "targets": self.targets}

    @classmethod
    def from_arrays(cls, arrays, neighbours, tolerance):
        n_references, n_asvs = len(arrays["targets"]), len(arrays["digests"])
        presence = scipy.sparse.csr_matrix(
            (np.ones(len(arrays["indices"])), arrays["indices"], arrays["indptr"]),
            shape=(n_references, n_asvs))
        return cls(np.asarray(arrays["digests"], dtype=np.uint8), presence,
                   np.asarray(arrays["targets"], dtype=np.float64), int(neighbours),
                   float(tolerance))


def agreed_answer(neighbour_targets, predictions, tolerance):
    """`predictions` with each sample whose neighbours agree (their targets span
    at most `tolerance`) replaced by the neighbours' median; also returns which
    samples were replaced."""
    with np.errstate(invalid="ignore"):
        agree = np.ptp(neighbour_targets, axis=1) <= tolerance
    median = np.median(np.where(agree[:, None], neighbour_targets, 0.0), axis=1)
    return np.where(agree, median, predictions), agree


def choose_tolerance(neighbour_targets, predictions, true, scale):
    """The candidate tolerance (TOLERANCES x `scale`) with the lowest mean
    absolute error on held-out samples, or None when none beats the model's
    `predictions` alone; and each candidate's error."""
    errors = {"none": float(np.abs(predictions - true).mean())}
    best, chosen = errors["none"], None
    for tolerance in np.asarray(TOLERANCES) * scale:
        answered, _ = agreed_answer(neighbour_targets, predictions, tolerance)
        errors[f"{tolerance:.6g}"] = error = float(np.abs(answered - true).mean())
        if error < best:
            best, chosen = error, float(tolerance)
    return chosen, errors


def fit_lookup(data, values, splits, validations, neighbours, scale, log):
    """(the NeighbourLookup, or None when it stays off; its settings and
    validation errors, for the model's info) of a regressor fitted on SampleSet
    `data` with targets `values` (original units).

    The tolerance is chosen on the validation samples of every member, each
    with its own (train, validation) split of `splits` as references and its
    own predictions (`validations`, their best epoch's validation tables): an
    ensemble's pooled predictions of held-out samples do not exist, as its
    members hold out different samples, and ten members' splits choose far less
    noisily than one. The candidates are TOLERANCES x `scale`. The references
    kept are then every fitted sample.
    """
    settings = {"neighbours": int(neighbours), "tolerance": None}
    parts = [(train_idx, val_idx, validation) for (train_idx, val_idx), validation
             in zip(splits, validations) if validation is not None and len(val_idx)]
    if not parts:
        log("The neighbour look-up stays off: choosing its tolerance needs a validation "
            "split (validation_fraction > 0).")
        return None, settings
    neighbour_targets, predicted, true = _held_out_neighbours(data, values, parts, neighbours)
    tolerance, errors = choose_tolerance(neighbour_targets, predicted, true, scale)
    settings.update(tolerance=tolerance, validation_mae=errors,
                    validation_samples=int(len(predicted)))
    if tolerance is None:
        log(f"The neighbour look-up stays off: no tolerance beat the model alone on the "
            f"validation split (MAE {errors['none']:.4g}).")
        return None, settings
    _, agree = agreed_answer(neighbour_targets, predicted, tolerance)
    log(f"Neighbour look-up: where the {neighbours} nearest fitted samples agree within "
        f"{tolerance:.4g} (on validation: {agree.mean():.0%} of samples; MAE "
        f"{errors['none']:.4g} -> {min(errors.values()):.4g}), their median is the answer.")
    everything = np.arange(len(data))
    return NeighbourLookup.from_samples(data, everything, values, neighbours, tolerance), settings


def _held_out_neighbours(data, values, parts, neighbours):
    """Pooled over (train, validation, validation table) `parts`: the validation
    samples' neighbour targets among their split's training samples, the
    model's predictions of them, and their true values."""
    neighbour_targets, predicted, true = [], [], []
    for train_idx, val_idx, validation in parts:
        held_out = NeighbourLookup.from_samples(data, train_idx, values[train_idx], neighbours)
        neighbour_targets.append(held_out.neighbour_targets(data, val_idx))
        predicted.append(validation["predicted"].to_numpy())
        true.append(values[val_idx])
    return np.concatenate(neighbour_targets), np.concatenate(predicted), np.concatenate(true)


def store_lookup(bundle, lookup, settings):
    """Keep a fitted look-up in ModelBundle `bundle`: its arrays (saved as
    lookup.safetensors; None when it stays off) and its settings (info)."""
    bundle.info[INFO_KEY] = settings
    bundle.lookup = None if lookup is None else lookup.to_arrays()


def load_lookup(bundle):
    """The ModelBundle's NeighbourLookup, or None when it answers alone."""
    if bundle.lookup is None:
        return None
    settings = bundle.info[INFO_KEY]
    return NeighbourLookup.from_arrays(bundle.lookup, settings["neighbours"],
                                       settings["tolerance"])


def _presence(rows, n_columns):
    """Binary CSR matrix with the given column indices in each row."""
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return scipy.sparse.csr_matrix((np.ones(len(indices)), indices, indptr),
                                   shape=(len(rows), n_columns))


__all__ = ["NeighbourLookup", "agreed_answer", "choose_tolerance", "sequence_digests",
           "fit_lookup", "store_lookup", "load_lookup", "TOLERANCES", "INFO_KEY"]
