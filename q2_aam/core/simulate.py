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
determines the data. Only numpy, scipy and pandas are used (no QIIME 2, biom or skbio).

`simulate_cohort` tells a sparse version of the same story for cohorts of up to
10^5 samples and 10^5 ASVs: nothing there is dense in samples x ASVs, and no
samples x samples distance matrix is made unless asked for.
"""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse

from .unifrac import Tree, TreeUniFrac, ancestor_pairs, unweighted_unifrac

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
        seen, duplicates = set(), []     # a set of row bytes: linear time, unlike sorting rows
        for row, code in enumerate(codes):
            key = code.tobytes()
            if key in seen:
                duplicates.append(row)
            seen.add(key)
        if not duplicates:
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


# --- large sparse cohorts -------------------------------------------------------------

# Where a cohort sample's ASVs come from: ASVs whose age trait ranks near the
# sample's age, ASVs favoured at its site, and ASVs drawn at random.
AGE_SHARE, SITE_SHARE = 0.5, 0.3
RANK_SPREAD = 0.03  # sd of the age pick around the sample's position, as a share of all ASVs


@dataclass
class SimulatedCohort:
    counts: scipy.sparse.csr_matrix  # [n_samples, n_asvs] int64, rows sample_ids, columns feature_ids
    sample_ids: list
    feature_ids: list
    sequences: pd.Series  # feature ID -> DNA sequence
    tree: Tree  # tip_names are feature_ids, in column order
    metadata: pd.DataFrame  # index 'sample-id'; columns age (float), site (str)

    def unifrac(self, metric: str = "unweighted") -> pd.DataFrame:
        """The full [n_samples, n_samples] UniFrac matrix: memory and time grow with
        n_samples^2, so only for cohorts where that fits."""
        distances = TreeUniFrac(self.tree, self.feature_ids, metric).distances(self.counts)
        return pd.DataFrame(distances, index=self.sample_ids, columns=self.sample_ids)


def simulate_cohort(
    n_samples: int = 2000,
    n_asvs: int = 10000,
    asvs_per_sample: tuple = (50, 300),
    seq_length: int = 150,
    depth: int = 10000,
    n_categories: int = 3,
    random_seed: int = 0,
) -> SimulatedCohort:
    """Simulate a sparse cohort: a tree over `n_asvs` tips, their sequences, and
    per sample between asvs_per_sample[0] and asvs_per_sample[1] ASVs (uniformly)
    with about `depth` reads. Relatives share traits, and samples pick ASVs by
    the traits that answer their age and site, so age, site and UniFrac carry
    signal. Time and memory are linear in n_asvs and in the non-zero counts."""
    # presence and effect_size do not apply here: valid stand-ins let the shared check run.
    _check_parameters(n_samples, n_asvs, seq_length, depth, 0.5, 0.0, n_categories)
    low, high = asvs_per_sample
    if not (1 <= low <= high <= n_asvs):
        raise ValueError(f"asvs_per_sample must be (low, high) with 1 <= low <= high <= n_asvs; "
                         f"got {asvs_per_sample!r} for n_asvs={n_asvs}")
    rng = np.random.default_rng(random_seed)
    parent, branch_length = random_tree_fast(n_asvs, rng)
    levels = _levels(parent, branch_length)
    sequences = evolve_sequences_by_level(parent, branch_length, levels, n_asvs, seq_length, rng)
    feature_ids = [hashlib.md5(seq.encode("ascii")).hexdigest() for seq in sequences]
    traits = evolve_traits_by_level(parent, branch_length, levels, n_asvs, 1 + n_categories, rng)

    age = np.round(rng.uniform(*AGE_RANGE, size=n_samples), 1)
    site_index = rng.permutation(np.arange(n_samples) % n_categories)
    n_present = rng.integers(low, high + 1, size=n_samples)
    counts = _cohort_counts(age, site_index, n_present, traits, depth, rng)

    sample_ids = _sample_ids(n_samples)
    site_names = np.array(_category_names(n_categories))
    metadata = pd.DataFrame({"age": age.astype(np.float64), "site": site_names[site_index]},
                            index=pd.Index(sample_ids, name="sample-id"))
    tree = Tree(parent=parent, branch_length=branch_length, tip_names=feature_ids)
    return SimulatedCohort(counts=counts, sample_ids=sample_ids, feature_ids=feature_ids,
                           sequences=pd.Series(sequences, index=feature_ids, dtype=object),
                           tree=tree, metadata=metadata)


def random_tree_fast(n_tips: int, rng: np.random.Generator):
    """Like `random_tree` (random pairs merged until one lineage is left, every
    parent numbered above its children, root last) in time linear in n_tips: a
    merged lineage's slot is refilled from the end of the list instead of
    shifting the list, and all random numbers are drawn at once."""
    n_nodes = 2 * n_tips - 1
    parent = np.full(n_nodes, -1, dtype=np.int64)
    lineages = list(range(n_tips))
    picks = rng.random((max(n_tips - 1, 0), 2))
    for step, new_node in enumerate(range(n_tips, n_nodes)):
        pair = []
        for u in picks[step]:
            slot = int(u * len(lineages))
            pair.append(lineages[slot])
            lineages[slot] = lineages[-1]
            lineages.pop()
        parent[pair] = new_node
        lineages.append(new_node)
    branch_length = rng.gamma(BRANCH_LENGTH_SHAPE, MEAN_BRANCH_LENGTH / BRANCH_LENGTH_SHAPE, size=n_nodes)
    branch_length[-1] = 0.0
    return parent, branch_length


def _levels(parent, branch_length) -> list:
    """Non-root nodes grouped by their number of edges from the root, top level first."""
    tree = Tree(parent=parent, branch_length=branch_length, tip_names=[])
    _, node = ancestor_pairs(tree, np.arange(len(parent)))
    edges_to_root = np.bincount(node, minlength=len(parent)) - 1
    order = np.argsort(edges_to_root, kind="stable")
    starts = np.searchsorted(edges_to_root[order], np.arange(1, edges_to_root.max() + 2))
    return [order[a:b] for a, b in zip(starts[:-1], starts[1:])]


def evolve_sequences_by_level(parent, branch_length, levels, n_tips, seq_length, rng) -> list:
    """`evolve_sequences` (Jukes-Cantor from a random root) one tree level at a time."""
    codes = np.empty((len(parent), seq_length), dtype=np.int8)
    codes[parent < 0] = rng.integers(0, 4, size=seq_length)
    for nodes in levels:
        redraw_p = 1.0 - np.exp(-4.0 / 3.0 * branch_length[nodes])
        redraw = rng.random((len(nodes), seq_length)) < redraw_p[:, None]
        fresh = rng.integers(0, 4, size=(len(nodes), seq_length), dtype=np.int8)
        codes[nodes] = np.where(redraw, fresh, codes[parent[nodes]])
    tips = codes[:n_tips]
    _make_rows_distinct(tips, rng)
    letters = NUCLEOTIDES.astype("S1")[tips]
    return [row.tobytes().decode("ascii") for row in letters]


def evolve_traits_by_level(parent, branch_length, levels, n_tips, n_traits, rng) -> np.ndarray:
    """`evolve_traits` (Brownian motion, tips z-scored) one tree level at a time."""
    values = np.zeros((len(parent), n_traits))
    for nodes in levels:
        steps = rng.normal(0.0, 1.0, size=(len(nodes), n_traits)) * np.sqrt(branch_length[nodes])[:, None]
        values[nodes] = values[parent[nodes]] + steps
    tips = values[:n_tips]
    return (tips - tips.mean(axis=0)) / tips.std(axis=0)


def _cohort_counts(age, site_index, n_present, traits, depth, rng,
                   chunk=5000) -> scipy.sparse.csr_matrix:
    """[n_samples, n_asvs] CSR counts, made `chunk` samples at a time so that
    temporary arrays stay small. See `_chunk_counts`."""
    n_samples, n_asvs = len(age), len(traits)
    by_age = np.argsort(traits[:, 0])
    by_site = np.argsort(-traits[:, 1:], axis=0)            # [n_asvs, n_categories]
    parts = [_chunk_counts(age[a:a + chunk], site_index[a:a + chunk], n_present[a:a + chunk],
                           by_age, by_site, depth, rng) for a in range(0, n_samples, chunk)]
    return scipy.sparse.vstack(parts, format="csr")


def _chunk_counts(age, site_index, n_present, by_age, by_site, depth, rng):
    """A sample's draws: AGE_SHARE from ASVs whose age trait ranks near the
    sample's age quantile, SITE_SHARE from the ASVs its site favours most, the
    rest at random. Twice as many draws as ASVs are made, and the first
    n_present distinct ones kept. Reads: 1 + Poisson around a log-normal share."""
    n_samples, n_asvs = len(age), len(by_age)
    sample = np.repeat(np.arange(n_samples), 2 * n_present)
    kind = rng.random(len(sample))
    quantile = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
    spread = RANK_SPREAD * n_asvs
    age_rank = np.clip(np.round(quantile[sample] * (n_asvs - 1) + rng.normal(0.0, spread, len(sample))),
                       0, n_asvs - 1).astype(np.int64)
    site_rank = np.minimum(np.abs(rng.normal(0.0, spread, len(sample))), n_asvs - 1).astype(np.int64)
    asv = np.where(kind < AGE_SHARE, by_age[age_rank],
                   np.where(kind < AGE_SHARE + SITE_SHARE, by_site[site_rank, site_index[sample]],
                            rng.integers(0, n_asvs, len(sample))))
    drawn = sample * n_asvs + asv
    _, first = np.unique(drawn, return_index=True)
    first = np.sort(first)                                  # distinct draws, in draw order
    starts = np.searchsorted(sample[first], np.arange(n_samples))
    rank = np.arange(len(first)) - starts[sample[first]]    # order of the draw in its sample
    keys = np.sort(drawn[first[rank < n_present[sample[first]]]])   # rows, then columns
    rows, cols = keys // n_asvs, keys % n_asvs
    weight = np.exp(rng.normal(0.0, BASELINE_SD, len(keys)))
    totals = np.bincount(rows, weights=weight, minlength=n_samples)
    reads = 1 + rng.poisson(depth * weight / totals[rows])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_samples))])
    return scipy.sparse.csr_matrix((reads.astype(np.int64), cols, indptr), shape=(n_samples, n_asvs))


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
