"""Unweighted UniFrac from scratch, on a minimal array-based rooted tree.

The tree is stored as flat arrays (one entry per node) rather than node objects,
so that both the simulator and the distance computation can work on whole
columns at once. Nodes 0..n_tips-1 are the tips; every other node is internal.

Unweighted UniFrac between samples i and j is the fraction of the branch length
observed in either sample that is observed in only one of them. A branch is
"observed" in a sample if any tip below it is present there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np


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
        """Newick text: tip names as labels, internal nodes unlabelled, ends with ';'.

        Written without recursion so that deep (caterpillar-like) trees cannot hit
        Python's recursion limit.
        """
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


def _heights(tree: Tree) -> np.ndarray:
    """Number of edges on the longest path from each node down to a tip.

    Processing nodes in increasing height guarantees every child is finished
    before its parent, without assuming anything about node numbering.
    """
    height = np.zeros(tree.n_nodes, dtype=np.int64)
    for tip in range(tree.n_tips):
        node, h = tip, 0
        while tree.parent[node] >= 0:
            node, h = tree.parent[node], h + 1
            if height[node] >= h:
                break  # the rest of this path was already raised by another tip
            height[node] = h
    return height


def branch_presence(presence: np.ndarray, tree: Tree) -> np.ndarray:
    """[n_nodes, n_samples] bool: is any tip below each node present in each sample?"""
    presence = np.asarray(presence, dtype=bool)
    n_samples, n_tips = presence.shape
    if n_tips != tree.n_tips:
        raise ValueError(f"presence has {n_tips} columns but the tree has {tree.n_tips} tips")
    # Count present tips below each node, pushing counts up one height level at a time.
    tip_count = np.zeros((tree.n_nodes, n_samples), dtype=np.int32)
    tip_count[:n_tips] = presence.T
    height = _heights(tree)
    order = np.argsort(height, kind="stable")
    level_starts = np.searchsorted(height[order], np.arange(height.max() + 1))
    level_ends = np.append(level_starts[1:], len(order))
    for start, end in zip(level_starts, level_ends):
        nodes = order[start:end]
        nodes = nodes[tree.parent[nodes] >= 0]
        # add.at, not +=, because two siblings in one level share a parent
        np.add.at(tip_count, tree.parent[nodes], tip_count[nodes])
    return tip_count > 0


def unweighted_unifrac(presence: np.ndarray, tree: Tree) -> np.ndarray:
    """[n_samples, n_samples] unweighted UniFrac distances from a [n_samples, n_tips] presence matrix."""
    observed = branch_presence(presence, tree).astype(np.float64)  # [n_nodes, n_samples]
    length = np.asarray(tree.branch_length, dtype=np.float64).copy()
    length[tree.parent < 0] = 0.0  # the root has no branch above it
    shared = observed.T @ (length[:, None] * observed)  # branch length seen in both i and j
    total = np.diag(shared).copy()  # branch length seen in each sample
    union = total[:, None] + total[None, :] - shared
    unique = union - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(union > 0, unique / np.where(union > 0, union, 1.0), 0.0)
    # Matrix products round differently above and below the diagonal; make it exact.
    distance = np.clip((distance + distance.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(distance, 0.0)
    return distance
