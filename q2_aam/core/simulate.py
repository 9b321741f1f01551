"""A small, deterministic simulator of amplicon microbiome data with known signal.

The generative story, in order:

1. a random rooted binary phylogeny over the ASVs;
2. DNA sequences evolved down that tree (Jukes-Cantor), so relatives look alike;
3. ASV traits evolved down the same tree (Brownian motion), so relatives also
   *respond* alike to the sample covariates;
4. per-sample covariates: a numeric ``age`` and a categorical ``site``;
5. per-sample ASV logits = baseline + effect_size * (trait response to covariates)
   + noise, a sparse set of present ASVs chosen by those logits, and counts drawn
   from a multinomial over the present ASVs.

Everything comes from one ``np.random.default_rng(random_seed)``, so a seed fully
determines the data. Only numpy and pandas are used (no QIIME 2, biom or skbio).
"""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .unifrac import Tree, unweighted_unifrac

NUCLEOTIDES = np.array(list("ACGT"))

# Mean length of one branch, in expected substitutions per site. With random
# pairwise merging a cherry spans two branches (~10% divergence between sister
# ASVs), while tips across the root are ~2 ln(n) branches apart (~50-60%).
MEAN_BRANCH_LENGTH = 0.05
BRANCH_LENGTH_SHAPE = 2.0  # gamma shape; >1 keeps branches away from zero

AGE_RANGE = (20.0, 80.0)
BASELINE_SD = 1.0  # spread of ASV abundance that no covariate explains
LOGIT_NOISE_SD = 0.5  # per sample and ASV, unexplained variation in abundance
PRESENCE_NOISE_SD = 1.0  # how loosely presence follows abundance
PRESENCE_JITTER = 0.2  # relative sd of the number of ASVs present per sample


@dataclass
class SimulatedData:
    counts: pd.DataFrame  # [n_samples, n_asvs] int64, index sample IDs, columns feature IDs
    sequences: pd.Series  # feature ID -> DNA sequence
    tree: Tree  # tip_names are the feature IDs, in the column order of counts
    metadata: pd.DataFrame  # index 'sample-id'; columns age (float), site (str)
    unifrac: pd.DataFrame  # [n_samples, n_samples] unweighted UniFrac on counts > 0

    def write(self, directory: str) -> None:
        """Write plain-text files that ``qiime tools import`` (or pandas) can read."""
        os.makedirs(directory, exist_ok=True)
        path = lambda name: os.path.join(directory, name)  # noqa: E731

        self.counts.to_csv(path("counts.tsv"), sep="\t", index_label="sample-id")

        with open(path("sequences.fasta"), "w") as fh:
            for feature_id, sequence in self.sequences.items():
                fh.write(f">{feature_id}\n{sequence}\n")

        with open(path("tree.nwk"), "w") as fh:
            fh.write(self.tree.to_newick() + "\n")

        # QIIME 2 metadata: the '#q2:types' row declares each column's type.
        with open(path("metadata.tsv"), "w") as fh:
            fh.write("sample-id\tage\tsite\n")
            fh.write("#q2:types\tnumeric\tcategorical\n")
            for sample_id, row in self.metadata.iterrows():
                fh.write(f"{sample_id}\t{float(row['age'])!r}\t{row['site']}\n")

        # lsmat: a header of a tab then the IDs, then one 'id\tvalues...' row per sample.
        unifrac = self.unifrac.copy()
        unifrac.index.name = None
        unifrac.to_csv(path("unifrac.tsv"), sep="\t")


def simulate(
    n_samples: int = 200,
    n_asvs: int = 300,
    seq_length: int = 150,
    depth: int = 2000,
    presence: float = 0.25,
    effect_size: float = 2.0,
    n_categories: int = 3,
    random_seed: int = 0,
) -> SimulatedData:
    """Simulate a feature table, sequences, tree, metadata and UniFrac distances."""
    _check_parameters(n_samples, n_asvs, seq_length, depth, presence, effect_size, n_categories)
    rng = np.random.default_rng(random_seed)

    parent, branch_length = random_tree(n_asvs, rng)
    sequences = evolve_sequences(parent, branch_length, n_asvs, seq_length, rng)
    feature_ids = [hashlib.md5(seq.encode("ascii")).hexdigest() for seq in sequences]
    tree = Tree(parent=parent, branch_length=branch_length, tip_names=feature_ids)

    # Trait 0 is the response to age; traits 1.. are the responses to each site.
    traits = evolve_traits(parent, branch_length, n_asvs, 1 + n_categories, rng)
    age_response, site_response = traits[:, 0], traits[:, 1:]

    age = np.round(rng.uniform(*AGE_RANGE, size=n_samples), 1)
    site_index = rng.permutation(np.arange(n_samples) % n_categories)  # balanced sites

    standardized_age = (age - age.mean()) / age.std()
    baseline = rng.normal(0.0, BASELINE_SD, size=n_asvs)
    logits = (
        baseline[None, :]
        + effect_size * (standardized_age[:, None] * age_response[None, :] + site_response[:, site_index].T)
        + rng.normal(0.0, LOGIT_NOISE_SD, size=(n_samples, n_asvs))
    )
    present = choose_present(logits, presence, rng)
    counts = draw_counts(logits, present, depth, rng)

    sample_ids = _sample_ids(n_samples)
    site_names = np.array(_category_names(n_categories))
    metadata = pd.DataFrame(
        {"age": age.astype(np.float64), "site": site_names[site_index]},
        index=pd.Index(sample_ids, name="sample-id"),
    )
    counts_df = pd.DataFrame(counts, index=pd.Index(sample_ids, name="sample-id"), columns=feature_ids)
    distances = unweighted_unifrac(counts > 0, tree)
    return SimulatedData(
        counts=counts_df,
        sequences=pd.Series(sequences, index=feature_ids, dtype=object),
        tree=tree,
        metadata=metadata,
        unifrac=pd.DataFrame(distances, index=sample_ids, columns=sample_ids),
    )


def _check_parameters(n_samples, n_asvs, seq_length, depth, presence, effect_size, n_categories) -> None:
    integer_minimums = {"n_samples": (n_samples, 2), "n_asvs": (n_asvs, 2), "seq_length": (seq_length, 20),
                        "depth": (depth, 1), "n_categories": (n_categories, 2)}
    for name, (value, minimum) in integer_minimums.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not (isinstance(presence, (int, float, np.number)) and 0 < presence <= 1):
        raise ValueError(f"presence must be in (0, 1], got {presence!r}")
    if not (isinstance(effect_size, (int, float, np.number)) and np.isfinite(effect_size) and effect_size >= 0):
        raise ValueError(f"effect_size must be a finite number >= 0, got {effect_size!r}")


def random_tree(n_tips: int, rng: np.random.Generator):
    """Random rooted binary tree by coalescent-like merging of random pairs.

    Returns (parent, branch_length) arrays over 2*n_tips-1 nodes. Tips are nodes
    0..n_tips-1, each merge creates the next node index, and the root is last, so
    every parent has a larger index than its children.
    """
    n_nodes = 2 * n_tips - 1
    parent = np.full(n_nodes, -1, dtype=np.int64)
    lineages = list(range(n_tips))
    for new_node in range(n_tips, n_nodes):
        first, second = sorted(rng.choice(len(lineages), size=2, replace=False), reverse=True)
        a, b = lineages.pop(first), lineages.pop(second)  # pop the larger position first
        parent[a] = parent[b] = new_node
        lineages.append(new_node)
    branch_length = rng.gamma(BRANCH_LENGTH_SHAPE, MEAN_BRANCH_LENGTH / BRANCH_LENGTH_SHAPE, size=n_nodes)
    branch_length[-1] = 0.0  # the root has no branch above it
    return parent, branch_length


def evolve_sequences(parent, branch_length, n_tips, seq_length, rng) -> list:
    """Jukes-Cantor evolution from a random root sequence; returns distinct tip sequences.

    Under JC69 a site is redrawn uniformly from ACGT with probability
    1 - exp(-4/3 * t), which makes it differ from its parent with probability
    3/4 * (1 - exp(-4/3 * t)).
    """
    n_nodes = len(parent)
    codes = np.empty((n_nodes, seq_length), dtype=np.int8)
    codes[-1] = rng.integers(0, 4, size=seq_length)
    for node in range(n_nodes - 2, -1, -1):  # parents have larger indices: go downwards
        redraw = rng.random(seq_length) < 1.0 - np.exp(-4.0 / 3.0 * branch_length[node])
        codes[node] = np.where(redraw, rng.integers(0, 4, size=seq_length), codes[parent[node]])
    tips = codes[:n_tips]
    _make_rows_distinct(tips, rng)
    return ["".join(row) for row in NUCLEOTIDES[tips]]


def _make_rows_distinct(codes: np.ndarray, rng: np.random.Generator) -> None:
    """Mutate one random site of any row that repeats an earlier row, until all differ."""
    while True:
        _, first_index = np.unique(codes, axis=0, return_index=True)
        duplicates = np.setdiff1d(np.arange(len(codes)), first_index)
        if len(duplicates) == 0:
            return
        for row in duplicates:
            site = rng.integers(codes.shape[1])
            codes[row, site] = (codes[row, site] + rng.integers(1, 4)) % 4  # a different base


def evolve_traits(parent, branch_length, n_tips, n_traits, rng) -> np.ndarray:
    """Brownian motion down the tree; returns [n_tips, n_traits] traits, each z-scored over tips."""
    n_nodes = len(parent)
    values = np.zeros((n_nodes, n_traits))
    for node in range(n_nodes - 2, -1, -1):
        step = rng.normal(0.0, np.sqrt(branch_length[node]), size=n_traits)
        values[node] = values[parent[node]] + step
    tips = values[:n_tips]
    # z-score so effect_size means "logit change per standard deviation of trait".
    return (tips - tips.mean(axis=0)) / tips.std(axis=0)


def choose_present(logits: np.ndarray, presence: float, rng: np.random.Generator) -> np.ndarray:
    """[n_samples, n_asvs] bool: each sample keeps its top-k ASVs by a noisy logit.

    k is about presence * n_asvs but varies by sample, and the noise lets some
    rarer ASVs in, so presence carries the covariate signal without being a
    deterministic cut.
    """
    n_samples, n_asvs = logits.shape
    jitter = rng.normal(1.0, PRESENCE_JITTER, size=n_samples)
    n_present = np.clip(np.round(presence * n_asvs * jitter), 1, n_asvs).astype(np.int64)
    score = logits + rng.normal(0.0, PRESENCE_NOISE_SD, size=logits.shape)
    rank = np.argsort(np.argsort(-score, axis=1), axis=1)  # 0 = highest score in the sample
    return rank < n_present[:, None]


def draw_counts(logits, present, depth, rng) -> np.ndarray:
    """Multinomial counts of `depth` reads over each sample's present ASVs (softmax of logits)."""
    masked = np.where(present, logits, -np.inf)
    masked = masked - masked.max(axis=1, keepdims=True)  # stable softmax
    weights = np.exp(masked)
    probabilities = weights / weights.sum(axis=1, keepdims=True)
    # depth >= 1 and at least one present ASV, so every sample gets a nonzero count.
    return rng.multinomial(depth, probabilities).astype(np.int64)


def _sample_ids(n_samples: int) -> list:
    width = max(4, len(str(n_samples)))
    return [f"sample-{i:0{width}d}" for i in range(1, n_samples + 1)]


def _category_names(n_categories: int) -> list:
    """'site-a', 'site-b', ..., 'site-z', 'site-aa', 'site-ab', ... (spreadsheet-style)."""
    names = []
    for i in range(n_categories):
        label, i = "", i + 1
        while i > 0:
            i, remainder = divmod(i - 1, 26)
            label = string.ascii_lowercase[remainder] + label
        names.append(f"site-{label}")
    return names
