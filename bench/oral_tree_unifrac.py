"""Pretraining on oral-dev from the tree against from the distance matrix.

The same encoder settings and seed (--seed), on split 0's training part: once with the
unweighted UniFrac matrix (../shared/data/oral-dev/unweighted-unifrac.tsv.gz),
once with each batch's UniFrac computed from tree.nwk (unifrac.TreeDistances).
Reports how far the tree's distances are from the matrix's on the training
samples, and each encoder's UniFrac R^2 over all pairs of the held-out test
part, scored against the matrix for both.

    OMP_NUM_THREADS=1 .venv/bin/python bench/oral_tree_unifrac.py --epochs 5 \\
        --out bench/out/oral_tree_unifrac.json
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import oral  # noqa: E402

from q2_aam.core.config import ModelConfig, TrainConfig  # noqa: E402
from q2_aam.core.data import split_indices  # noqa: E402
from q2_aam.core.pretrain import evaluate_unifrac, pretrain  # noqa: E402
from q2_aam.core.unifrac import TreeDistances, tree_from_treenode  # noqa: E402


def tree_distances(data):
    import skbio
    tree = tree_from_treenode(skbio.TreeNode.read(oral.path("tree.nwk"), format="newick"))
    return TreeDistances(tree, data.feature_ids, data.counts, "unweighted")


def held_out_r2(encoder, test):
    import torch
    evaluate = evaluate_unifrac(batch_size=64)
    metrics, _ = evaluate(encoder.build_model(), test, np.arange(len(test)), torch.device("cpu"))
    return metrics["unifrac_r2"]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed of both runs (default: the split seed)")
    parser.add_argument("--out", default="bench/out/oral_tree_unifrac.json")
    args = parser.parse_args()
    table, sequences, matrix = oral.load_table(), oral.load_sequences(), oral.load_unifrac()
    ids = list(table.ids(axis="sample"))
    train_idx, test_idx = split_indices(len(ids), 0.2, np.random.default_rng(args.split_seed))
    model_cfg = ModelConfig(embedding_dim=64, attention_layers=2)
    data = oral.sample_set(table, sequences, [ids[i] for i in train_idx], model_cfg)
    test = oral.sample_set(table, sequences, [ids[i] for i in test_idx], model_cfg)
    test.distances = oral.distances(matrix, test)
    from_matrix, from_tree = oral.distances(matrix, data), tree_distances(data)
    first = np.arange(300)
    report = {"arguments": vars(args), "max_abs_difference_tree_vs_matrix": float(np.abs(
        from_tree.submatrix(first) - from_matrix[np.ix_(first, first)]).max())}
    train_cfg = TrainConfig.preset("pretrain", epochs=args.epochs, patience=args.epochs,
                                   learning_rate=1e-3,
                                   random_seed=args.split_seed if args.seed is None else args.seed)
    for name, source in (("matrix", from_matrix), ("tree", from_tree)):
        data.distances = source
        start = time.perf_counter()
        encoder = pretrain(data, model_cfg, train_cfg)
        best = encoder.history.loc[encoder.history["epoch"] == encoder.info["best_epoch"]]
        report[name] = {"seconds": time.perf_counter() - start,
                        "val_unifrac_r2": float(best["val/unifrac_r2"].iloc[0]),
                        "test_unifrac_r2_against_matrix": held_out_r2(encoder, test)}
        print(name, report[name], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
