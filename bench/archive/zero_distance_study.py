"""Zero-distance study on ../shared/data/oral-dev (issue 6, item 4).

How many off-diagonal unweighted UniFrac distances are 0 or near 0, between
which samples they fall (same study, same age as a same-subject proxy,
identical feature sets, richness), how large a share of the UniFrac loss's
pairs they are in random batches of 32, and how held-out R^2 depends on
including them. Writes PNG figures and a JSON summary under docs/figures/.

    OMP_NUM_THREADS=1 .venv/bin/python bench/archive/zero_distance_study.py

Numpy analysis only (about a minute, one core). `--train-comparison` also
pretrains a small encoder twice (zero_distance_weight 0 and 1, seed 0, 600
samples) on the CPU and writes docs/figures/zero_distance_training.json.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import pandas as pd

# Archived study: bench/ (oral.py, oral_supervised.py) and this folder are importable.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import oral  # noqa: E402

THRESHOLDS = [1e-6, 0.01, 0.05, 0.1]   # "below" thresholds, strict <
BATCH_SIZE = 32
N_BATCHES = 1000
NOISE_SD = 0.05
NEAR = 0.1                                # the "near-zero" set characterised when no pair is 0


def label(threshold):
    return "zero" if threshold == 0 else f"below_{threshold:g}"


# ---------------------------------------------------------------- the tree
def array_tree(newick_path, tip_order):
    """skbio tree -> q2_aam.core.unifrac.Tree with tips in `tip_order`."""
    import skbio
    from q2_aam.core.unifrac import Tree
    root = skbio.TreeNode.read(newick_path)
    nodes = list(root.postorder(include_self=True))
    tips = {n.name: n for n in nodes if n.is_tip()}
    missing = set(tip_order) - set(tips)
    if missing:
        raise SystemExit(f"{len(missing)} table features are not tips of the tree.")
    ordered = [tips[name] for name in tip_order] + [n for n in nodes if not n.is_tip()]
    index = {id(n): i for i, n in enumerate(ordered)}
    parent = np.array([index[id(n.parent)] if n.parent is not None else -1 for n in ordered])
    length = np.array([n.length if n.length is not None else 0.0 for n in ordered], dtype=float)
    return Tree(parent=parent, branch_length=length, tip_names=list(tip_order))


def duplicate_groups(matrix):
    """Groups (lists of row indices, size >= 2) of identical rows of a bool matrix."""
    seen = {}
    packed = np.packbits(matrix, axis=1)
    for row, bits in enumerate(packed):
        seen.setdefault(hashlib.sha1(bits.tobytes()).hexdigest(), []).append(row)
    return [g for g in seen.values() if len(g) > 1]


def pairs_in_groups(groups):
    return int(sum(len(g) * (len(g) - 1) // 2 for g in groups))


# ---------------------------------------------------------------- analysis
def r2(true, predicted):
    total = ((true - true.mean()) ** 2).sum()
    return float(1 - ((true - predicted) ** 2).sum() / total) if total > 0 else float("nan")


def pair_table(mask, rows, cols, values, ids, study, age, richness, presence):
    """One row per selected pair, closest first."""
    sel = np.flatnonzero(mask)
    sel = sel[np.argsort(values[sel], kind="stable")]
    a, b = rows[sel], cols[sel]
    shared = np.asarray([(presence[i] & presence[j]).sum() for i, j in zip(a, b)])
    union = np.asarray([(presence[i] | presence[j]).sum() for i, j in zip(a, b)])
    return pd.DataFrame({
        "sample_a": ids[a], "sample_b": ids[b], "distance": values[sel],
        "study_a": study[a], "study_b": study[b], "age_a": age[a], "age_b": age[b],
        "richness_a": richness[a], "richness_b": richness[b],
        "shared_features": shared, "features_only_in_one": union - shared,
        "jaccard_distance": 1 - shared / np.maximum(union, 1)})


def group_stats(mask, same_study, same_age, identical, rows, cols, richness):
    n = int(mask.sum())
    involved = np.unique(np.concatenate([rows[mask], cols[mask]]))
    out = {"pairs": n, "samples_involved": int(len(involved))}
    if n:
        out.update({
            "same_study_fraction": float(same_study[mask].mean()),
            "same_age_fraction": float(same_age[mask].mean()),
            "identical_feature_set_fraction": float(identical[mask].mean()),
            "richness_involved_median": float(np.median(richness[involved])),
            "richness_involved_mean": float(richness[involved].mean()),
            "pair_min_richness_median": float(np.median(
                np.minimum(richness[rows[mask]], richness[cols[mask]])))})
    return out


def simulate_batches(distances, pool, rng, thresholds):
    """Random batches of BATCH_SIZE from `pool`: per batch, the number of upper-
    triangle pairs at 0 and below each threshold."""
    r, c = np.triu_indices(BATCH_SIZE, k=1)
    counts = np.zeros((N_BATCHES, len(thresholds)), dtype=np.int64)
    for k in range(N_BATCHES):
        idx = rng.choice(pool, BATCH_SIZE, replace=False)
        values = distances[np.ix_(idx, idx)][r, c]
        for t, threshold in enumerate(thresholds):
            counts[k, t] = (values == 0).sum() if threshold == 0 else (values < threshold).sum()
    n_pairs = len(r)
    return {label(th): {"batches_with_any": float((counts[:, t] > 0).mean()),
                        "mean_pairs_per_batch": float(counts[:, t].mean()),
                        "max_pairs_in_a_batch": int(counts[:, t].max()),
                        "share_of_loss_pairs": float(counts[:, t].sum() / (n_pairs * N_BATCHES))}
            for t, th in enumerate(thresholds)}, n_pairs


def loss_weight_check(distances, pool, rng, weights=(0.0, 0.1, 1.0)):
    """The plugin's own unifrac_loss on real batch distances and random embeddings,
    per zero_distance_weight: the largest difference between weights over N_BATCHES."""
    import torch
    from q2_aam.core.losses import unifrac_loss
    torch.manual_seed(0)
    biggest = 0.0
    for _ in range(N_BATCHES):
        idx = np.sort(rng.choice(pool, BATCH_SIZE, replace=False))
        true = torch.from_numpy(distances[np.ix_(idx, idx)].astype(np.float32))
        emb = torch.randn(BATCH_SIZE, 32)
        values = [float(unifrac_loss(emb, true, w)) for w in weights]
        biggest = max(biggest, max(values) - min(values))
    return {"weights": list(weights), "batches": N_BATCHES,
            "max_loss_difference_between_weights": biggest}


# ---------------------------------------------------------------- figures
def figures(outdir, values, same_study_flag, nearest, richness, involved, per_study, near_mask):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 8})

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    ax = axes[0]
    ax.hist(values, bins=np.linspace(0, 1, 101), color="0.4")
    ax.set_yscale("log")
    for th, colour in zip(THRESHOLDS[1:], ("tab:red", "tab:orange", "tab:green")):
        ax.axvline(th, color=colour, lw=0.8, ls="--", label=f"d = {th:g}: {(values < th).sum()}"
                   " pairs below")
    ax.set_title(f"All {len(values):,} sample pairs; exactly 0: {(values == 0).sum()}")
    ax.set_xlabel("unweighted UniFrac distance")
    ax.set_ylabel("pairs (log scale)")
    ax.legend(frameon=False, fontsize=7, loc="upper left")

    ax = axes[1]
    bins = np.linspace(0, 0.3, 61)
    ax.hist([values[same_study_flag], values[~same_study_flag]], bins=bins, stacked=True,
            color=["tab:blue", "tab:orange"], label=["same study", "different study"])
    ax.set_yscale("log")
    ax.set_xlim(0, 0.3)
    ax.axvline(values.min(), color="k", lw=0.8)
    ax.text(values.min(), 30, f" smallest: {values.min():.4f}", fontsize=7)
    ax.set_title("Near-zero region, d < 0.3 (bin width 0.005)")
    ax.set_xlabel("unweighted UniFrac distance")
    ax.legend(frameon=False, fontsize=7, loc="upper left")

    ax = axes[2]
    ax.hist(nearest, bins=np.linspace(0, 0.8, 81), color="tab:purple")
    for th, colour in zip(THRESHOLDS[1:], ("tab:red", "tab:orange", "tab:green")):
        ax.axvline(th, color=colour, lw=0.8, ls="--",
                   label=f"{(nearest < th).sum()} samples closer than {th:g}")
    ax.legend(frameon=False, fontsize=7, loc="upper right")
    ax.set_title("Each sample's nearest neighbour")
    ax.set_xlabel("distance to the closest other sample")
    ax.set_ylabel("samples")
    fig.tight_layout()
    hist_path = os.path.join(outdir, "zero-distance-histogram.png")
    fig.savefig(hist_path, dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ax = axes[0]
    bins = np.linspace(0, richness.max() + 10, 41)
    ax.hist(richness, bins=bins, density=True, alpha=0.6, color="0.5", label="all samples")
    ax.hist(richness[involved], bins=bins, density=True, alpha=0.6, color="tab:red",
            label=f"in a pair with d < {NEAR:g} (n={len(involved)})")
    ax.set_xlabel("features per sample (richness at 1000 reads)")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("Richness of samples in near-zero pairs")

    ax = axes[1]
    rate = per_study["within_pairs_below_near"] / per_study["within_pairs"].clip(lower=1) * 1e4
    ax.barh(per_study.index, rate, color="tab:blue")
    for y, (n, k) in enumerate(zip(per_study["within_pairs_below_near"],
                                   per_study["within_pairs"])):
        ax.text(rate.iloc[y], y, f" {n}/{k}", va="center", fontsize=7)
    ax.set_xlabel(f"within-study pairs with d < {NEAR:g}, per 10,000")
    ax.set_title("Near-zero pairs by study")
    ax.invert_yaxis()
    ax.set_xlim(0, rate.max() * 1.5 if rate.max() > 0 else 1)
    fig.tight_layout()
    pairs_path = os.path.join(outdir, "zero-distance-pairs.png")
    fig.savefig(pairs_path, dpi=90)
    plt.close(fig)
    return [hist_path, pairs_path]


# ---------------------------------------------------------------- training (opt-in)
def training_comparison(outdir, n_samples=600, epochs=5, weights=(0.0, 1.0), seed=0):
    import torch
    torch.set_num_threads(1)
    from q2_aam._inputs import attach_distances, build_sample_set
    from q2_aam.core.config import ModelConfig, TrainConfig
    from q2_aam.core.pretrain import pretrain
    table, sequences, unifrac = oral.load_table(), oral.load_sequences(), oral.load_unifrac()
    ids = np.array(table.ids(axis="sample"))
    subset = list(np.sort(np.random.default_rng(seed).choice(ids, n_samples, replace=False)))
    model_cfg = ModelConfig(embedding_dim=32, attention_heads=2, attention_layers=1)
    results = {"n_samples": n_samples, "epochs": epochs, "seed": seed,
               "model": model_cfg.to_dict(), "runs": {}}
    for w in weights:
        data = build_sample_set(table.filter(subset, axis="sample", inplace=False), sequences,
                                model_cfg.max_bp, model_cfg.asv_limit)
        attach_distances(data, unifrac)
        rows, cols = np.triu_indices(len(data), k=1)
        results["zero_pairs_in_subset"] = int((data.distances[rows, cols] == 0).sum())
        cfg = TrainConfig(epochs=epochs, patience=epochs, batch_size=32, learning_rate=1e-3,
                          device="cpu", random_seed=seed, validation_fraction=0.1,
                          zero_distance_weight=w)
        start = time.perf_counter()
        bundle = pretrain(data, model_cfg, cfg)
        history = bundle.history
        kept = history["epoch"] == bundle.info["best_epoch"]
        results["training"] = cfg.to_dict()
        results["runs"][str(w)] = {
            "seconds": time.perf_counter() - start,
            "val_unifrac_r2_per_epoch": [float(x) for x in history["val/unifrac_r2"]],
            "kept_epoch": int(bundle.info["best_epoch"]),
            "val_unifrac_r2_at_kept_epoch": float(history.loc[kept, "val/unifrac_r2"].iloc[0]),
            "max_val_unifrac_r2_over_epochs": float(history["val/unifrac_r2"].max()),
            "train_loss_per_epoch": [float(x) for x in history["train/loss"]]
            if "train/loss" in history else None}
        print(f"weight {w}: {results['runs'][str(w)]}", flush=True)
    runs = list(results["runs"].values())
    results["identical_histories"] = all(
        r["val_unifrac_r2_per_epoch"] == runs[0]["val_unifrac_r2_per_epoch"] for r in runs)
    with open(os.path.join(outdir, "zero_distance_training.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    return results


# ---------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "..", "docs", "figures"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-comparison", action="store_true",
                        help="also pretrain with zero_distance_weight 0 and 1 (CPU, minutes)")
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--train-epochs", type=int, default=5)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    dm = oral.load_unifrac()
    table, metadata = oral.load_table(), oral.load_metadata()
    ids = np.array(dm.ids)
    distances = dm.data
    n = len(ids)
    study = metadata.loc[ids, "study"].astype(str).to_numpy()
    age = metadata.loc[ids, "age"].to_numpy(dtype=float)
    feature_ids = list(table.ids(axis="observation"))
    counts = table.filter(list(ids), axis="sample", inplace=False).matrix_data.T.tocsr()
    presence = (counts > 0).toarray()                  # samples x features, in dm order
    richness = presence.sum(1)

    rows, cols = np.triu_indices(n, k=1)
    values = distances[rows, cols]
    same_study = study[rows] == study[cols]
    same_age = age[rows] == age[cols]
    summary = {"data": "../shared/data/oral-dev",
               "samples": n, "features": len(feature_ids), "pairs": int(len(values)),
               "distance_file_precision": "rounded to 6 decimals (a stored 0 means < 5e-7)"}

    # 1. How many distances are 0 or near 0.
    counts_below = {"exactly_zero": int((values == 0).sum())}
    counts_below.update({label(t): int((values < t).sum()) for t in THRESHOLDS})
    nearest = np.where(np.eye(n, dtype=bool), np.inf, distances).min(1)
    summary["distance_counts"] = counts_below
    summary["distance_fractions"] = {k: v / len(values) for k, v in counts_below.items()}
    summary["distance_quantiles"] = {f"q{q:g}": float(np.quantile(values, q / 100))
                                     for q in (0, 0.01, 0.1, 1, 5, 50, 95, 100)}
    summary["nearest_neighbour_distance"] = {
        "min": float(nearest.min()), "median": float(np.median(nearest)),
        "max": float(nearest.max()),
        "samples_with_a_neighbour_below": {f"{t:g}": int((nearest < t).sum())
                                           for t in THRESHOLDS + [0.2]}}
    diag = np.diag(distances)
    summary["diagonal_all_zero"] = bool((diag == 0).all())
    summary["symmetric"] = bool(np.array_equal(distances, distances.T))

    # 2. When is UniFrac exactly 0? Identical feature sets, or differences only on
    #    zero-length branches: compare the sets of observed positive-length branches.
    from q2_aam.core.unifrac import branch_presence, unweighted_unifrac
    tree = array_tree(oral.path("tree.nwk"), feature_ids)
    length = tree.branch_length.copy()
    length[tree.parent < 0] = 0.0
    observed = branch_presence(presence, tree)        # nodes x samples
    positive = observed[length > 0].T                  # samples x positive-length branches
    identical_sets = duplicate_groups(presence)
    identical_branches = duplicate_groups(positive)
    is_tip = np.arange(tree.n_nodes) < tree.n_tips
    summary["zero_condition"] = {
        "tree_branches": int(tree.n_nodes - 1),
        "zero_length_branches": int((length[tree.parent >= 0] == 0).sum()),
        "zero_length_terminal_branches": int(((length == 0) & is_tip).sum()),
        "branches_shorter_than_1e-6": int((length[tree.parent >= 0] < 1e-6).sum()),
        "sample_pairs_with_identical_feature_sets": pairs_in_groups(identical_sets),
        "sample_pairs_with_identical_positive_length_branch_sets":
            pairs_in_groups(identical_branches),
        "note": "Unweighted UniFrac is exactly 0 iff the two samples observe the same set of "
                "positive-length branches; identical feature sets imply it, and features on "
                "zero-length terminal branches can differ without changing it."}
    # Recompute UniFrac from table + tree for a subset, to check the file is what we think.
    rng = np.random.default_rng(args.seed)
    near_mask = values < NEAR
    involved = np.unique(np.concatenate([rows[near_mask], cols[near_mask]]))
    check = np.unique(np.concatenate([involved, rng.choice(n, 300, replace=False)]))
    recomputed = unweighted_unifrac(presence[check], tree)
    summary["recomputation_check"] = {
        "samples": int(len(check)),
        "max_abs_difference_to_file": float(np.abs(recomputed -
                                                   distances[np.ix_(check, check)]).max())}

    # 3. Between which samples do zero / near-zero pairs fall?
    identical_pair = np.zeros(len(values), dtype=bool)
    if identical_sets:
        key = {}
        for g, members in enumerate(identical_sets):
            for m in members:
                key[m] = g
        ga = np.array([key.get(i, -1) for i in range(n)])
        identical_pair = (ga[rows] >= 0) & (ga[rows] == ga[cols])
    summary["base_rates_all_pairs"] = {
        "same_study_fraction": float(same_study.mean()),
        "same_age_fraction": float(same_age.mean()),
        "richness_median": float(np.median(richness)), "richness_mean": float(richness.mean()),
        "richness_min": int(richness.min()), "richness_max": int(richness.max())}
    groups = {"exactly_zero": values == 0}
    groups.update({label(t): values < t for t in THRESHOLDS})
    summary["who"] = {name: group_stats(mask, same_study, same_age, identical_pair, rows, cols,
                                        richness) for name, mask in groups.items()}
    for name, stats in summary["who"].items():
        if stats["pairs"]:
            stats["same_study_enrichment"] = stats["same_study_fraction"] / same_study.mean()
            stats["same_age_enrichment"] = stats["same_age_fraction"] / same_age.mean()
    closest = pair_table(near_mask, rows, cols, values, ids, study, age, richness, presence)
    summary["closest_pairs"] = closest.head(15).to_dict(orient="records")
    summary["near_pairs_jaccard_distance_median"] = (
        float(closest["jaccard_distance"].median()) if len(closest) else None)
    richness_rank = pd.Series(richness).rank(pct=True).to_numpy()
    summary["near_pairs_richness_percentile_median"] = (
        float(np.median(richness_rank[involved])) if len(involved) else None)
    # Distance against richness: are low-richness pairs closer? (Spearman over all pairs.)
    from scipy.stats import spearmanr
    pair_min_richness = np.minimum(richness[rows], richness[cols])
    sub = rng.choice(len(values), 200000, replace=False)
    summary["spearman_distance_vs_pair_min_richness"] = float(
        spearmanr(values[sub], pair_min_richness[sub]).correlation)

    per_study = []
    for s in sorted(set(study), key=lambda s: -(study == s).sum()):
        members = np.flatnonzero(study == s)
        within = same_study & (study[rows] == s)
        cross = ~same_study & ((study[rows] == s) | (study[cols] == s))
        ages = age[members]
        per_study.append({
            "study": s, "samples": len(members), "distinct_ages": int(len(np.unique(ages))),
            "within_pairs": int(within.sum()),
            "within_pairs_zero": int((within & (values == 0)).sum()),
            "within_pairs_below_0.05": int((within & (values < 0.05)).sum()),
            "within_pairs_below_near": int((within & near_mask).sum()),
            "within_pairs_below_near_same_age": int((within & near_mask & same_age).sum()),
            "cross_pairs_below_near": int((cross & near_mask).sum()),
            "within_min_distance": float(values[within].min()) if within.any() else None,
            "within_median_distance": float(np.median(values[within])) if within.any() else None,
            "richness_median": float(np.median(richness[members]))})
    per_study = pd.DataFrame(per_study).set_index("study")
    summary["per_study"] = per_study.reset_index().to_dict(orient="records")
    summary["near_threshold"] = NEAR

    # 4. Share of the UniFrac loss's pairs, in random training batches.
    from q2_aam.core.data import split_indices
    train_idx, val_idx = split_indices(n, 0.1, np.random.default_rng([args.seed, 2]))
    thresholds = [0] + THRESHOLDS
    batches, pairs_per_batch = simulate_batches(distances, train_idx,
                                                np.random.default_rng(args.seed), thresholds)
    summary["batches"] = {"batch_size": BATCH_SIZE, "batches": N_BATCHES,
                          "pairs_per_batch": pairs_per_batch,
                          "pool": "pretrain's training split (90%, seed 0)", **batches}
    summary["loss_weight_check"] = loss_weight_check(distances, train_idx,
                                                     np.random.default_rng(args.seed))

    # 5. Held-out R^2 with and without zero / near-zero pairs, for fixed predictors.
    vr, vc = np.triu_indices(len(val_idx), k=1)
    val_true = distances[np.ix_(val_idx, val_idx)][vr, vc]
    train_mean = float(values[np.isin(rows, train_idx) & np.isin(cols, train_idx)].mean())
    noise = np.random.default_rng(args.seed).normal(0, NOISE_SD, len(val_true))
    predictors = {"trivial (training mean)": np.full(len(val_true), train_mean),
                  f"noisy (true + N(0, {NOISE_SD}), clipped)": np.clip(val_true + noise, 0, 1)}
    keeps = {"all pairs": np.ones(len(val_true), bool), "excluding d == 0": val_true != 0}
    keeps.update({f"excluding d < {t:g}": val_true >= t for t in THRESHOLDS[1:]})
    summary["heldout_r2"] = {
        "validation_samples": int(len(val_idx)), "validation_pairs": int(len(val_true)),
        "zero_pairs": int((val_true == 0).sum()),
        **{name: {k: {"pairs": int(m.sum()), "r2": r2(val_true[m], p[m])}
                  for k, m in keeps.items()} for name, p in predictors.items()}}

    summary["figures"] = [os.path.relpath(p, args.out) for p in figures(
        args.out, values, same_study, nearest, richness, involved, per_study, near_mask)]
    if args.train_comparison:
        training_comparison(args.out, n_samples=args.train_samples, epochs=args.train_epochs,
                            seed=args.seed)
        summary["training_comparison"] = "zero_distance_training.json"
    summary["training_command"] = (
        "qiime aam pretrain ... --p-zero-distance-weight W, or "
        "q2_aam.core.pretrain.pretrain(data, model_cfg, TrainConfig(zero_distance_weight=W))")
    summary["seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "zero_distance_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=lambda o: o.item() if hasattr(o, "item") else o)
    print(json.dumps({k: summary[k] for k in ("distance_counts", "nearest_neighbour_distance",
                                              "zero_condition", "recomputation_check",
                                              "seconds")}, indent=2))
    print(per_study.to_string())


if __name__ == "__main__":
    main()
