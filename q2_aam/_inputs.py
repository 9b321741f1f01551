"""Turn QIIME 2 views into the core's SampleSet, refusing bad input clearly."""
import sys

import numpy as np


def log(message):
    # stderr is what `qiime --verbose` shows.
    print(message, file=sys.stderr)


def _few(ids, n=5):
    ids = list(ids)
    shown = ", ".join(map(str, ids[:n]))
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def build_sample_set(table, sequences, max_bp, asv_limit, min_samples=1):
    """biom.Table + pd.Series of DNA -> SampleSet (samples without counts dropped)."""
    from .core.data import SampleSet   # imports torch: only when an action runs
    if table.is_empty() or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError("The feature table is empty: it has no samples or no features.")
    totals = table.sum(axis="sample")
    if (totals == 0).any():
        empty = table.ids(axis="sample")[totals == 0]
        log(f"Dropping {len(empty)} sample(s) with zero counts: {_few(empty)}.")
        table = table.filter(empty, axis="sample", invert=True, inplace=False)
    if table.shape[1] < min_samples:
        raise ValueError(
            f"Only {table.shape[1]} sample(s) with non-zero counts remain; at least "
            f"{min_samples} are needed. Check the table (e.g. `qiime feature-table summarize`).")
    table = table.remove_empty(axis="observation", inplace=False)
    feature_ids = list(table.ids(axis="observation"))
    seq_lookup = {str(k): str(v) for k, v in sequences.items()}
    missing = [f for f in feature_ids if f not in seq_lookup]
    if missing:
        raise ValueError(
            f"{len(missing)} feature(s) in the table have no sequence in the sequences "
            f"input: {_few(missing)}. Provide the FeatureData[Sequence] that matches the table "
            "(e.g. the representative sequences from the same DADA2/deblur run), or filter the "
            "table with `qiime feature-table filter-features`.")
    counts = table.matrix_data.T.tocsr()      # samples x features
    data = SampleSet(counts, table.ids(axis="sample"), feature_ids, seq_lookup, max_bp, asv_limit)
    if data.n_truncated:
        log(f"{data.n_truncated} sequence(s) longer than max_bp={max_bp} were truncated.")
    if data.n_capped:
        log(f"{data.n_capped} sample(s) hold more than asv_limit={asv_limit} features; "
            "their most abundant features were kept.")
    return data


def attach_distances(data, distance_matrix):
    """Give `data` the distance sub-matrix of its samples, in its sample order."""
    dm_ids = set(distance_matrix.ids)
    missing = [s for s in data.sample_ids if s not in dm_ids]
    if missing:
        raise ValueError(
            f"The distance matrix lacks {len(missing)} sample(s) of the table: {_few(missing)}. "
            "Compute the distance matrix from the same table, or filter the table to its samples.")
    sub = distance_matrix.filter(data.sample_ids).data
    if not np.isfinite(sub).all() or sub.min() < 0 or sub.max() > 1:
        raise ValueError(
            f"Distances must lie in [0, 1] (like UniFrac); this matrix spans "
            f"[{np.nanmin(sub):.4g}, {np.nanmax(sub):.4g}]. Use a UniFrac distance matrix.")
    data.distances = sub.astype(np.float32)


def attach_alpha(data, series, name="faith_pd"):
    missing = [s for s in data.sample_ids if s not in series.index]
    if missing:
        raise ValueError(f"The {name} input lacks {len(missing)} sample(s) of the table: "
                         f"{_few(missing)}.")
    values = series.reindex(data.sample_ids).to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"The {name} input has missing or non-finite values.")
    return values.astype(np.float32)
