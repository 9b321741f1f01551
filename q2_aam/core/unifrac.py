"""UniFrac distances between any batch of samples, from a rooted tree.

The tree is stored as flat arrays (one entry per node) rather than node objects,
so that the simulator and the distance computation work on whole columns at
once and no traversal recurses (deep trees cannot hit Python's recursion limit).

Once per table, `TreeUniFrac` keeps only the branches that lie above the table's
features and have a length, as a sparse matrix `ancestors[feature, branch]`. A
batch's distances are then two sparse/dense products, with no loop over nodes:

    observed[sample, branch] = counts[sample, feature] @ ancestors[feature, branch]

with counts as presence (unweighted) or proportions (weighted normalized). Both
metrics follow q2-diversity / Striped UniFrac:

    unweighted          d(i, j) = sum_b L_b |I_ib - I_jb| / sum_b L_b max(I_ib, I_jb)
    weighted normalized d(i, j) = sum_b L_b |p_ib - p_jb| / sum_f depth_f (p_if + p_jf)

where I_ib says whether sample i holds a feature below branch b, p_ib is the
share of its reads below b, and depth_f is the root-to-tip length of feature f.
The root has no branch above it, and a pair with nothing to compare (a zero
denominator) is 0 apart.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import List

import numpy as np
import scipy.sparse
from scipy.spatial.distance import pdist, squareform

from .inputs import few_ids

METRICS = ("unweighted", "weighted_normalized")

# Work arrays stay below these sizes whatever the number of samples: dense
# [samples x branches] blocks of _CHUNK_CELLS cells, and _CHUNK_PAIRS listed pairs.
_CHUNK_CELLS = 1 << 22
_CHUNK_PAIRS = 1 << 22
# (tip, ancestor) pairs kept for the whole run, about 12 bytes each once built.
# Trees of 16S ASVs are tens to hundreds of nodes deep: 10^5 tips x 100 = 10^7.
MAX_ANCESTOR_PAIRS = 200_000_000


@dataclass
class Tree:
    parent: np.ndarray  # [n_nodes] int, index of each node's parent, -1 for the root
    branch_length: np.ndarray  # [n_nodes] float, length of the branch above each node
    tip_names: List[str]  # [n_tips] names of nodes 0..n_tips-1

    @property
    def n_tips(self) -> int:
        return len(self.tip_names)

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def root(self) -> int:
        return int(np.flatnonzero(self.parent < 0)[0])

    def children(self) -> List[List[int]]:
        """children[node] lists the node's children, in increasing index order."""
        kids: List[List[int]] = [[] for _ in range(self.n_nodes)]
        for node, parent in enumerate(self.parent):
            if parent >= 0:
                kids[parent].append(node)
        return kids

    def to_newick(self) -> str:
        """Newick text: tip names as labels, internal nodes unlabelled, ends with ';'."""
        kids = self.children()
        parts: List[str] = []
        # The stack holds node indices still to write and literal text to emit;
        # an internal node pushes "(", its children separated by ",", then ")".
        stack: list = [self.root]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
            elif item < self.n_tips:
                parts.append(self.tip_names[item] + self._length_text(item))
            else:
                stack.append(")" + self._length_text(item))
                for k, child in enumerate(reversed(kids[item])):
                    if k > 0:
                        stack.append(",")
                    stack.append(child)
                stack.append("(")
        return "".join(parts) + ";"

    def _length_text(self, node: int) -> str:
        if self.parent[node] < 0:
            return ""  # the root has no branch above it
        return ":" + format(float(self.branch_length[node]), ".10g")


def tree_from_treenode(root) -> Tree:
    """Tree from a rooted skbio.TreeNode (or any object with postorder(),
    children, length and name). Internal node names are dropped; a branch
    without a length is an error, except above the root, which is ignored."""
    nodes = list(root.postorder())          # children before parents, root last
    if not nodes or nodes[-1] is not root:
        raise ValueError("The tree's postorder() must end with its root.")
    tips = [node for node in nodes if not node.children]
    internal = [node for node in nodes if node.children]
    ordered = tips + internal                # the Tree convention: tips are 0..n_tips-1
    index = {id(node): i for i, node in enumerate(ordered)}
    parent = np.full(len(ordered), -1, dtype=np.int64)
    for node in internal:
        for child in node.children:
            parent[index[id(child)]] = index[id(node)]
    missing = [i for i, node in enumerate(ordered) if node.length is None and node is not root]
    if missing:
        raise ValueError(
            f"{len(missing)} branch(es) of the tree have no length (for example above "
            f"{_describe_nodes(ordered, missing)}). UniFrac needs every branch length; use a "
            "tree with lengths, such as `qiime phylogeny align-to-tree-mafft-fasttree` builds.")
    length = np.array([0.0 if node.length is None else float(node.length) for node in ordered])
    length[index[id(root)]] = 0.0            # the root has no branch above it
    names = [node.name for node in tips]
    unnamed = [i for i, name in enumerate(names) if name is None]
    if unnamed:
        raise ValueError(f"{len(unnamed)} tip(s) of the tree have no name; tips are matched to "
                         "the table's features by name (feature ID).")
    return Tree(parent=parent, branch_length=length, tip_names=[str(n) for n in names])


def _describe_nodes(nodes, positions, n=3) -> str:
    shown = [repr(nodes[i].name) if nodes[i].name is not None else "an unnamed node"
             for i in positions[:n]]
    return ", ".join(shown)


# --- checks and the ancestor matrix ---------------------------------------------------


def check_tree(tree: Tree) -> None:
    """Raise a ValueError naming the problem unless `tree` is one rooted tree with
    finite, non-negative branch lengths (the root's own length is ignored)."""
    parent = np.asarray(tree.parent)
    if len(parent) == 0 or len(tree.branch_length) != len(parent):
        raise ValueError("The tree needs one parent and one branch length per node.")
    if ((parent < -1) | (parent >= len(parent))).any():
        raise ValueError("The tree's parent array points outside the tree.")
    n_roots = int((parent < 0).sum())
    if n_roots != 1:
        raise ValueError(
            f"The tree must be rooted (one node without a parent); it has {n_roots}. Root it, "
            "for example with `qiime phylogeny midpoint-root`.")
    length = np.asarray(tree.branch_length, dtype=np.float64)
    bad = np.flatnonzero((parent >= 0) & ~(np.isfinite(length) & (length >= 0)))
    if len(bad):
        raise ValueError(
            f"{len(bad)} branch length(s) of the tree are negative or not finite "
            f"({few_ids(length[bad], 3)}). UniFrac needs lengths >= 0; rebuild or re-root the tree "
            "(negative lengths can come from some rooting or tree-building tools).")
    if len(set(tree.tip_names)) != tree.n_tips:
        repeated = [name for name, n in Counter(tree.tip_names).items() if n > 1]
        raise ValueError(f"Tip names must be unique to match features; repeated: {few_ids(repeated)}.")


def ancestor_pairs(tree: Tree, tips: np.ndarray):
    """(node, column) pairs: every node on the path from tips[column] up to the root,
    the tip and the root included. Climbs all paths one level per step, so the
    cost is the total path length, and a cycle in `parent` is detected."""
    parent = np.asarray(tree.parent, dtype=np.int64)
    current, column = np.asarray(tips, dtype=np.int64), np.arange(len(tips))
    nodes, columns, n_pairs = [current[:0]], [column[:0]], 0
    for _ in range(tree.n_nodes + 1):
        if len(current) == 0:
            return np.concatenate(nodes), np.concatenate(columns)
        n_pairs += len(current)
        if n_pairs > MAX_ANCESTOR_PAIRS:
            raise ValueError(
                f"The tree is too deep for UniFrac from the tree: the paths from its {len(tips)} "
                f"tips to the root hold over {MAX_ANCESTOR_PAIRS:,} nodes in all (a tip is on "
                f"average more than {MAX_ANCESTOR_PAIRS // max(len(tips), 1):,} nodes below the "
                "root). Give a precomputed UniFrac distance matrix instead.")
        nodes.append(current)
        columns.append(column)
        up = parent[current]
        above = up >= 0
        current, column = up[above], column[above]
    raise ValueError("The tree's parent array has a cycle: it is not a rooted tree.")


def branch_presence(presence: np.ndarray, tree: Tree) -> np.ndarray:
    """[n_nodes, n_samples] bool: is any tip below each node present in each sample?"""
    presence = scipy.sparse.csr_matrix(np.asarray(presence, dtype=bool), dtype=np.float64)
    if presence.shape[1] != tree.n_tips:
        raise ValueError(f"presence has {presence.shape[1]} columns but the tree has "
                         f"{tree.n_tips} tips")
    nodes, tips = ancestor_pairs(tree, np.arange(tree.n_tips))
    ancestors = scipy.sparse.csr_matrix((np.ones(len(nodes)), (tips, nodes)),
                                        shape=(tree.n_tips, tree.n_nodes))
    return (presence @ ancestors).toarray().T > 0


# --- distances ----------------------------------------------------------------------


class TreeUniFrac:
    """UniFrac between samples of a table whose columns are `feature_ids`,
    matched to the tree's tips by name.

    Memory: the tree arrays and one sparse entry per (feature, branch above it);
    nothing grows with the number of samples.
    """

    def __init__(self, tree: Tree, feature_ids, metric: str = "unweighted"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}.")
        check_tree(tree)
        self.metric = metric
        self.feature_ids = list(feature_ids)
        tips = match_tips(tree, self.feature_ids)
        nodes, features = ancestor_pairs(tree, tips)
        length = np.asarray(tree.branch_length, dtype=np.float64)
        # The root's branch and zero-length branches add nothing to either metric.
        keep = (np.asarray(tree.parent)[nodes] >= 0) & (length[nodes] > 0)
        nodes, features = nodes[keep], features[keep]
        branches, column = np.unique(nodes, return_inverse=True)   # only branches above features
        self.branch_length = length[branches]                      # [n_branches]
        self.ancestors = scipy.sparse.csr_matrix(                  # [n_features, n_branches]
            (np.ones(len(nodes)), (features, column)),
            shape=(len(self.feature_ids), len(branches)))
        self.ancestors.sort_indices()
        self.tip_depth = self.ancestors @ self.branch_length        # [n_features] root-to-tip

    @property
    def n_features(self) -> int:
        return len(self.feature_ids)

    def distances(self, counts) -> np.ndarray:
        """[k, k] float64 distances between the k rows of `counts` ([k, n_features],
        dense or sparse, every feature of each sample, in feature_ids order)."""
        counts = scipy.sparse.csr_matrix(counts, dtype=np.float64)
        if counts.shape[1] != self.n_features:
            raise ValueError(f"counts has {counts.shape[1]} columns; the table has "
                             f"{self.n_features} features.")
        counts.eliminate_zeros()
        if counts.nnz and counts.data.min() < 0:
            raise ValueError("Counts must be >= 0.")
        if self.metric == "unweighted":
            weights = counts.copy()
            weights.data[:] = 1.0
        else:
            totals = np.asarray(counts.sum(axis=1)).ravel()
            weights = scipy.sparse.diags(1.0 / np.where(totals > 0, totals, 1.0)) @ counts
        observed = (weights @ self.ancestors).tocsr()     # [k, n_branches], sparse
        if self.metric == "unweighted":
            observed.data[:] = 1.0
        return _pairwise(observed, self.branch_length, self.metric)


def _pairwise(observed, length, metric) -> np.ndarray:
    """Distances from `observed` [k, n_branches] (presence or read share below each
    branch, CSR). Everything reduces to per-sample totals and the pairwise overlap
    sum_b L_b min(x_ib, x_jb), to which only branches seen by two or more samples
    contribute. Branches seen by many of the k samples are done as a dense block,
    the rest by listing their few pairs, so the cost follows the data, not k^2 per
    branch."""
    k = observed.shape[0]
    total = observed @ length                                 # [k] sum_b L_b x_ib
    rows = np.repeat(np.arange(k), np.diff(observed.indptr))
    cols, values = observed.indices, observed.data
    samples_per_branch = np.bincount(cols, minlength=observed.shape[1])
    seen_by = samples_per_branch[cols]
    dense = seen_by > max(2, k // 16)
    listed = (seen_by >= 2) & ~dense
    dense_branches = np.flatnonzero(samples_per_branch > max(2, k // 16))
    overlap = (_dense_overlap(rows[dense], cols[dense], values[dense], dense_branches, length, k,
                              metric)
               + _listed_overlap(rows[listed], cols[listed], values[listed], length, k))
    pair_total = total[:, None] + total[None, :]
    unique = pair_total - 2.0 * overlap                      # sum_b L_b |x_ib - x_jb|
    denominator = pair_total - overlap if metric == "unweighted" else pair_total
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(denominator > 0, unique / np.where(denominator > 0, denominator, 1.0),
                            0.0)
    # Sums run in different orders above and below the diagonal; make it exact.
    distance = np.clip((distance + distance.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(distance, 0.0)
    return distance


def _dense_overlap(rows, cols, values, branches, length, k, metric) -> np.ndarray:
    """[k, k] sum_b L_b min(x_ib, x_jb) over `branches` (sorted; the entries are
    given as row, column, value), as dense [k, branches] blocks of bounded size."""
    overlap = np.zeros((k, k))
    cols = np.searchsorted(branches, cols)                   # column within the block
    step = max(1, _CHUNK_CELLS // max(k, 1))
    if len(branches) > step:                                  # chunks take contiguous runs
        order = np.argsort(cols, kind="stable")
        rows, cols, values = rows[order], cols[order], values[order]
    bounds = np.searchsorted(cols, np.arange(0, len(branches) + step, step))
    for start in range(0, len(branches), step):
        lo, hi = bounds[start // step], bounds[start // step + 1]
        block = np.zeros((k, min(step, len(branches) - start)))
        block[rows[lo:hi], cols[lo:hi] - start] = values[lo:hi]
        weighted = block * length[branches[start:start + block.shape[1]]]
        if metric == "unweighted":
            overlap += weighted @ block.T                     # presence: min is the product
        else:
            # sum_b L_b min(x, y) = (sum_b L_b x + sum_b L_b y - sum_b L_b |x - y|) / 2
            per_sample = weighted.sum(axis=1)
            overlap += (per_sample[:, None] + per_sample[None, :]
                        - squareform(pdist(weighted, "cityblock"))) / 2.0
    return overlap


def _listed_overlap(rows, cols, values, length, k) -> np.ndarray:
    """[k, k] sum_b L_b min(x_ib, x_jb) over the branches `cols`, pair by pair:
    each entry is paired with the entries after it on the same branch."""
    order = np.lexsort((rows, cols))
    rows, cols, values = rows[order], cols[order], values[order]
    n = len(cols)
    group_start = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]]) if n else np.zeros(0, int)
    group_size = np.diff(np.r_[group_start, n])
    place = np.arange(n) - np.repeat(group_start, group_size)
    partners = np.repeat(group_size, group_size) - 1 - place   # entries after this one
    ends = np.cumsum(partners)
    flat = np.zeros(k * k)
    cuts = np.searchsorted(ends, np.arange(_CHUNK_PAIRS, ends[-1] + _CHUNK_PAIRS, _CHUNK_PAIRS),
                           side="right") if n else []
    lo = 0
    for hi in cuts:
        first = np.repeat(np.arange(lo, hi), partners[lo:hi])
        starts = np.repeat(ends[lo:hi] - partners[lo:hi], partners[lo:hi])
        second = first + 1 + (np.arange(len(first)) + (ends[lo - 1] if lo else 0) - starts)
        weight = length[cols[first]] * np.minimum(values[first], values[second])
        flat += np.bincount(rows[first] * k + rows[second], weights=weight, minlength=k * k)
        lo = hi
    overlap = flat.reshape(k, k)
    return overlap + overlap.T


def match_tips(tree: Tree, feature_ids) -> np.ndarray:
    """Tip node index of each feature, by name; a clear error for features the tree lacks."""
    tip_of = {name: i for i, name in enumerate(tree.tip_names)}
    missing = [f for f in feature_ids if f not in tip_of]
    if missing and len(missing) == len(feature_ids):
        raise ValueError(
            f"None of the table's {len(feature_ids)} feature IDs is a tip of the tree: its tips "
            f"({few_ids(tree.tip_names, 3)}) are not the table's feature IDs "
            f"({few_ids(feature_ids, 3)}). Tips are matched by feature ID, so the tree must be built "
            "from the same representative sequences with the same IDs (hashed or sequence IDs "
            "on both), e.g. `qiime phylogeny align-to-tree-mafft-fasttree`.")
    if missing:
        raise ValueError(
            f"{len(missing)} of the table's {len(feature_ids)} features are not tips of the tree: "
            f"{few_ids(missing)}. Build the tree from the same representative sequences as the table "
            "(e.g. `qiime phylogeny align-to-tree-mafft-fasttree`), or filter the table to the "
            "tree's features (`qiime phylogeny filter-table`).")
    return np.array([tip_of[f] for f in feature_ids], dtype=np.int64)


def unweighted_unifrac(presence: np.ndarray, tree: Tree) -> np.ndarray:
    """[n_samples, n_samples] unweighted UniFrac from a [n_samples, n_tips] presence matrix."""
    presence = np.asarray(presence, dtype=bool)
    if presence.shape[1] != tree.n_tips:
        raise ValueError(f"presence has {presence.shape[1]} columns but the tree has "
                         f"{tree.n_tips} tips")
    return TreeUniFrac(tree, tree.tip_names).distances(presence)


# --- distance sources: what a SampleSet reads a batch's distances from -------------------


class DenseDistances:
    """A precomputed [n, n] distance matrix (rows and columns in sample order)."""

    def __init__(self, matrix):
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"A distance matrix must be square; got shape {matrix.shape}.")
        self.matrix = matrix.astype(np.float32, copy=False)

    def __len__(self):
        return self.matrix.shape[0]

    def submatrix(self, indices) -> np.ndarray:
        """[k, k] float32 distances between the samples `indices`, in that order."""
        indices = np.asarray(indices)
        return self.matrix[np.ix_(indices, indices)]


class TreeDistances:
    """UniFrac computed from the tree for whichever samples are asked for.

    `counts` [n_samples, n_features] holds every feature of each sample (UniFrac
    sees all of them, whatever cap a model puts on ASVs per sample); stored as
    CSR, so memory is linear in the table's non-zero entries.
    """

    def __init__(self, tree: Tree, feature_ids, counts, metric: str = "unweighted"):
        self.unifrac = TreeUniFrac(tree, feature_ids, metric)
        self.counts = scipy.sparse.csr_matrix(counts)
        if self.counts.shape[1] != self.unifrac.n_features:
            raise ValueError(f"counts has {self.counts.shape[1]} columns but {len(feature_ids)} "
                             "feature IDs were given.")

    def __len__(self):
        return self.counts.shape[0]

    @property
    def metric(self) -> str:
        return self.unifrac.metric

    def submatrix(self, indices) -> np.ndarray:
        """[k, k] float32 distances between the samples `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.unifrac.distances(self.counts[indices]).astype(np.float32)


__all__ = ["METRICS", "Tree", "TreeUniFrac", "DenseDistances", "TreeDistances", "check_tree",
           "tree_from_treenode", "match_tips", "branch_presence", "unweighted_unifrac"]
