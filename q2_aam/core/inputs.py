"""Input preparation: a feature table, sequences, a metadata column and UniFrac
(a distance matrix or a tree) into the core's SampleSet, refusing bad input
clearly. Used by the QIIME 2 actions and by the torchrun command line (cli.py);
imports no QIIME 2 (views are duck-typed: biom.Table, a metadata column with
to_series() and name)."""
import os
import sys

import numpy as np

# q2cli without --verbose points file descriptors 1 and 2 at a log file while an
# action runs, and shows that log only when the action fails. The stderr this
# process started with (taken when the plugin is imported, before any action
# runs) is where `notice` reaches the user anyway.
try:
    _STARTUP_STDERR = os.dup(2)
except OSError:
    _STARTUP_STDERR = None


def log(message):
    # stderr is what `qiime --verbose` shows.
    print(message, file=sys.stderr)


def notice(message):
    """`message` on stderr, and also on the process's original stderr when
    that has been redirected (q2cli without --verbose): for what the user must
    learn even from a run that succeeds, such as samples left out."""
    log(message)
    if _STARTUP_STDERR is not None and _stderr_redirected():
        sys.stderr.flush()
        try:
            os.write(_STARTUP_STDERR, f"{message}\n".encode("utf-8", "replace"))
        except OSError:
            pass


def _stderr_redirected():
    try:
        now, then = os.fstat(2), os.fstat(_STARTUP_STDERR)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


def few_ids(ids, n=5):
    """The first `n` of `ids` for a message, and how many more there are."""
    ids = list(ids)
    shown = ", ".join(map(str, ids[:n]))
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def build_sample_set(table, sequences, max_bp, asv_limit, min_samples=1):
    """biom.Table + pd.Series of DNA -> SampleSet (samples without counts
    dropped, with a notice), refusing what the core cannot read with advice."""
    from .data import SampleSet   # imports torch: only when an action runs
    if table.is_empty() or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError("The feature table is empty: it has no samples or no features.")
    check_counts(table)
    totals = table.sum(axis="sample")
    if (totals == 0).any():
        empty = table.ids(axis="sample")[totals == 0]
        notice(f"Dropping {len(empty)} sample(s) with zero counts: {few_ids(empty)}.")
        table = table.filter(empty, axis="sample", invert=True, inplace=False)
    if table.shape[1] < min_samples:
        raise ValueError(
            f"Only {table.shape[1]} sample(s) with non-zero counts remain; at least "
            f"{min_samples} are needed. Check the table (e.g. `qiime feature-table summarize`).")
    table = table.remove_empty(axis="observation", inplace=False)
    dna = {str(k): str(v) for k, v in sequences.items()}
    missing = [f for f in table.ids(axis="observation") if f not in dna]
    if missing:
        raise ValueError(
            f"{len(missing)} feature(s) in the table have no sequence in the sequences "
            f"input: {few_ids(missing)}. Provide the FeatureData[Sequence] that matches the table "
            "(e.g. the representative sequences from the same DADA2/deblur run), or filter the "
            "table with `qiime feature-table filter-features`.")
    data = SampleSet.from_biom(table, dna, max_bp, asv_limit)
    if data.n_truncated:
        notice(f"{data.n_truncated} sequence(s) longer than max_bp={max_bp} were truncated.")
    if data.n_capped:
        notice(f"{data.n_capped} sample(s) hold more than asv_limit={asv_limit} features; "
            "their most abundant features were kept.")
    return data


def sample_targets(sample_ids, column, missing_samples):
    """Align a metadata column to the table's `sample_ids`; returns (kept ids, values)."""
    series = column.to_series()
    absent = [s for s in sample_ids if s not in series.index]
    if absent and missing_samples == "error":
        raise ValueError(
            f"{len(absent)} sample(s) of the table are missing from the metadata: "
            f"{few_ids(absent)}. Add them to the metadata, filter the table, or use "
            "missing_samples='ignore'.")
    series = series.reindex([s for s in sample_ids if s in series.index])
    n_missing_values = int(series.isna().sum())
    if n_missing_values:
        notice(f"Dropping {n_missing_values} sample(s) with no value in '{column.name}': "
            f"{few_ids(series.index[series.isna()])}.")
    if absent:
        notice(f"Ignoring {len(absent)} table sample(s) absent from the metadata.")
    series = series.dropna()
    if series.empty:
        raise ValueError(f"None of the table's {len(sample_ids)} samples has a value in "
                         f"'{column.name}'. Check that the table and the metadata describe the "
                         "same samples (their sample IDs must match).")
    return list(series.index), series.to_numpy()


def sample_set_with_targets(table, sequences, metadata, missing_samples, max_bp, asv_limit):
    """The table's samples that have a value in `metadata` as a SampleSet, and their
    values in its sample order (samples without counts are dropped from both)."""
    ids, values = sample_targets(list(table.ids(axis="sample")), metadata, missing_samples)
    table = table.filter(ids, axis="sample", inplace=False)
    data = build_sample_set(table, sequences, max_bp, asv_limit)
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    return data, values[[position[s] for s in data.sample_ids]]


def check_classes(labels, validation_fraction):
    """At least two classes, and with validation every class at least twice."""
    classes, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"Only one class ({classes[0] if len(classes) else 'none'}) is present; "
                         "a classifier needs at least two.")
    # Stratified validation takes at least one sample of each class and must leave one.
    if validation_fraction > 0 and counts.min() < 2:
        small = classes[counts < 2]
        raise ValueError(
            f"Class(es) {few_ids(small)} have a single sample, too few for the stratified "
            "validation split. Remove or merge them, or set validation_fraction to 0.")


def check_split_size(n_samples, validation_fraction):
    """Enough samples for training (2) and, with validation, for validation (2)."""
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


def check_counts(table):
    """Every count of the biom.Table is a finite, non-negative number; a
    ValueError naming the samples and features otherwise."""
    counts = table.matrix_data.tocoo()       # features x samples; only stored entries
    bad = ~np.isfinite(counts.data) | (counts.data < 0)
    if not bad.any():
        return
    samples = table.ids(axis="sample")[np.unique(counts.col[bad])]
    features = table.ids(axis="observation")[np.unique(counts.row[bad])]
    first = np.flatnonzero(bad)[0]
    example = (f"{counts.data[first]!r} for feature "
               f"{table.ids(axis='observation')[counts.row[first]]} "
               f"in sample {table.ids(axis='sample')[counts.col[first]]}")
    raise ValueError(
        f"The feature table holds {int(bad.sum())} count(s) that are negative, infinite or "
        f"missing (NaN), e.g. {example}: in {len(samples)} sample(s) ({few_ids(samples)}) and "
        f"{len(features)} feature(s) ({few_ids(features)}). Counts must be finite and at least 0; "
        "correct the table, or remove those samples or features (`qiime feature-table "
        "filter-samples` / `filter-features`).")


def refuse_non_finite(values, what, sample_ids, model):
    """Refuse to write `values` (one row per sample) unless all are finite; the
    error says what the model's weights show about why."""
    values = np.asarray(values, dtype=np.float64).reshape(len(sample_ids), -1)
    bad = ~np.isfinite(values).all(axis=1)
    if not bad.any():
        return
    raise ValueError(
        f"The model gave non-finite (NaN or infinite) {what} for {int(bad.sum())} of "
        f"{len(sample_ids)} sample(s) ({few_ids(np.asarray(sample_ids, dtype=object)[bad])}); "
        f"nothing was written. {_weights_diagnosis(model.state_dict)} Re-fit the model (a fit "
        "that diverged may need a lower learning_rate), or use another one; `qiime tools "
        "validate --level max` checks a model artifact.")


def _weights_diagnosis(state_dict):
    import torch
    largest, where = 0.0, None
    for name, tensor in state_dict.items():
        if not torch.isfinite(tensor).all():
            return f"Its weights hold NaN or infinite values (in {name})."
        if tensor.numel() and tensor.abs().max().item() >= largest:
            largest, where = tensor.abs().max().item(), name
    return (f"Its weights are finite but reach {largest:.3g} (in {where}): its arithmetic "
            "overflows, so the weights are damaged or came from a fit that diverged.")


def attach_distances(data, distance_matrix):
    """Give `data` the distance sub-matrix of its samples, in its sample order."""
    dm_ids = set(distance_matrix.ids)
    missing = [s for s in data.sample_ids if s not in dm_ids]
    if missing:
        raise ValueError(
            f"The distance matrix lacks {len(missing)} sample(s) of the table: {few_ids(missing)}. "
            "Compute the distance matrix from the same table, or filter the table to its samples.")
    sub = distance_matrix.filter(data.sample_ids).data
    if not np.isfinite(sub).all() or sub.min() < 0 or sub.max() > 1:
        raise ValueError(
            f"Distances must lie in [0, 1] (like UniFrac); this matrix spans "
            f"[{np.nanmin(sub):.4g}, {np.nanmax(sub):.4g}]. Use a UniFrac distance matrix.")
    data.distances = sub.astype(np.float32)


def attach_unifrac(data, distance_matrix, phylogeny, metric, required):
    """Give `data` its UniFrac targets: a distance matrix, or the tree from which
    each batch's distances are computed (never an N x N matrix). Exactly one of
    the two when `required`, at most one otherwise."""
    if distance_matrix is not None and phylogeny is not None:
        raise ValueError("Give either distance_matrix or phylogeny, not both: the UniFrac "
                         "targets come from one of them.")
    if distance_matrix is not None:
        attach_distances(data, distance_matrix)
    elif phylogeny is not None:
        from .unifrac import TreeDistances, tree_from_treenode
        data.distances = TreeDistances(tree_from_treenode(phylogeny), data.feature_ids,
                                       data.counts, metric)
    elif required:
        raise ValueError("Pretraining needs UniFrac targets: give a distance_matrix (e.g. "
                         "from `qiime diversity beta-phylogenetic`) or the rooted phylogeny "
                         "of the table's features (then each batch's UniFrac is computed "
                         "from the tree).")


def attach_alpha(data, series, name="faith_pd"):
    missing = [s for s in data.sample_ids if s not in series.index]
    if missing:
        raise ValueError(f"The {name} input lacks {len(missing)} sample(s) of the table: "
                         f"{few_ids(missing)}.")
    values = series.reindex(data.sample_ids).to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"The {name} input has missing or non-finite values.")
    return values.astype(np.float32)
