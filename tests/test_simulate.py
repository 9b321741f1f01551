"""Tests for the data simulator (small dense data sets and large sparse cohorts)
and the from-scratch unweighted UniFrac."""
import io
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from q2_aam.core.simulate import SimulatedData, random_tree_fast, simulate, simulate_cohort
from q2_aam.core.unifrac import Tree, branch_presence, unweighted_unifrac


@pytest.fixture(scope="module")
def data() -> SimulatedData:
    return simulate(random_seed=0)


# --- helpers ---------------------------------------------------------------------


def log_relative_abundance(counts: pd.DataFrame) -> np.ndarray:
    values = counts.to_numpy(dtype=np.float64)
    return np.log1p(values / values.sum(axis=1, keepdims=True) * 1e4)


def ridge_fit_predict(x_train, y_train, x_test, penalty=10.0):
    """Closed-form ridge regression with centred features and an unpenalised intercept."""
    x_mean, y_mean = x_train.mean(axis=0), y_train.mean()
    xc = x_train - x_mean
    weights = np.linalg.solve(xc.T @ xc + penalty * np.eye(xc.shape[1]), xc.T @ (y_train - y_mean))
    return (x_test - x_mean) @ weights + y_mean


def age_mae_ratio(sim: SimulatedData) -> float:
    """Held-out ridge MAE for age divided by the MAE of predicting the training mean."""
    x = log_relative_abundance(sim.counts)
    y = sim.metadata["age"].to_numpy()
    train = np.arange(len(y)) < int(0.75 * len(y))  # sample order is already random
    predicted = ridge_fit_predict(x[train], y[train], x[~train])
    model_mae = np.abs(predicted - y[~train]).mean()
    mean_mae = np.abs(y[train].mean() - y[~train]).mean()
    return model_mae / mean_mae


def hamming(a: str, b: str) -> float:
    return float(np.mean(np.frombuffer(a.encode(), np.uint8) != np.frombuffer(b.encode(), np.uint8)))


# --- determinism and shapes ----------------------------------------------------


def test_same_seed_gives_identical_data(data):
    again = simulate(random_seed=0)
    pd.testing.assert_frame_equal(data.counts, again.counts)
    pd.testing.assert_series_equal(data.sequences, again.sequences)
    pd.testing.assert_frame_equal(data.metadata, again.metadata)
    pd.testing.assert_frame_equal(data.unifrac, again.unifrac)
    assert data.tree.to_newick() == again.tree.to_newick()


def test_different_seed_gives_different_data(data):
    other = simulate(random_seed=1)
    assert not set(other.sequences) & set(data.sequences)
    assert not np.array_equal(other.counts.to_numpy(), data.counts.to_numpy())
    assert not np.array_equal(other.metadata["age"].to_numpy(), data.metadata["age"].to_numpy())


def test_shapes_types_and_ids(data):
    assert data.counts.shape == (200, 300)
    assert (data.counts.dtypes == np.int64).all()
    assert data.counts.index[0] == "sample-0001"
    assert list(data.counts.index) == list(data.metadata.index) == list(data.unifrac.index)
    assert list(data.unifrac.columns) == list(data.unifrac.index)
    assert list(data.counts.columns) == list(data.sequences.index) == data.tree.tip_names
    assert data.metadata.index.name == "sample-id"
    assert data.metadata["age"].dtype == np.float64
    assert set(data.metadata["site"]) == {"site-a", "site-b", "site-c"}
    assert data.metadata["age"].between(20, 80).all()


def test_every_sample_has_counts_summing_to_depth(data):
    per_sample = data.counts.sum(axis=1)
    assert (per_sample == 2000).all()
    assert ((data.counts > 0).sum(axis=1) >= 1).all()


def test_presence_is_sparse_and_near_requested_fraction():
    sim = simulate(n_samples=100, presence=0.4, random_seed=3)
    observed = (sim.counts > 0).to_numpy().mean()
    # Kept ASVs can still draw zero reads, so observed presence sits at or below the target.
    assert 0.1 < observed <= 0.45


def test_tiny_and_extreme_parameters_work():
    sim = simulate(n_samples=2, n_asvs=2, seq_length=20, depth=1, presence=0.01,
                   effect_size=0.0, n_categories=2, random_seed=5)
    assert sim.counts.to_numpy().sum(axis=1).tolist() == [1, 1]
    assert sim.sequences.nunique() == 2


# --- sequences and tree ----------------------------------------------------------


def test_sequences_distinct_correct_length_acgt(data):
    assert data.sequences.nunique() == len(data.sequences)
    assert (data.sequences.str.len() == 150).all()
    assert data.sequences.str.fullmatch("[ACGT]+").all()


def test_feature_ids_are_md5_of_sequences(data):
    import hashlib

    for feature_id, sequence in data.sequences.items():
        assert feature_id == hashlib.md5(sequence.encode()).hexdigest()


def test_sequences_distinct_even_when_short_and_many():
    sim = simulate(n_samples=5, n_asvs=400, seq_length=20, random_seed=2)
    assert sim.sequences.nunique() == 400


def test_close_relatives_have_more_similar_sequences(data):
    tree, seqs = data.tree, data.sequences.to_numpy()
    tip_parents = tree.parent[: tree.n_tips]
    sisters = [np.flatnonzero(tip_parents == p) for p in np.unique(tip_parents)]
    cherries = [pair for pair in sisters if len(pair) == 2]
    assert len(cherries) > 20
    cherry_distance = np.mean([hamming(seqs[a], seqs[b]) for a, b in cherries])
    rng = np.random.default_rng(0)
    pairs = rng.choice(tree.n_tips, size=(300, 2))
    random_distance = np.mean([hamming(seqs[a], seqs[b]) for a, b in pairs if a != b])
    assert 0.03 < cherry_distance < 0.3  # relatives differ, but not by much
    assert random_distance > 2.5 * cherry_distance


def test_tree_is_rooted_binary_with_positive_branches(data):
    tree = data.tree
    assert tree.n_nodes == 2 * tree.n_tips - 1
    assert (tree.parent < 0).sum() == 1
    child_counts = np.bincount(tree.parent[tree.parent >= 0], minlength=tree.n_nodes)
    assert (child_counts[: tree.n_tips] == 0).all()
    assert (child_counts[tree.n_tips:] == 2).all()
    assert (tree.branch_length[tree.parent >= 0] > 0).all()


def test_newick_shape(data):
    newick = data.tree.to_newick()
    assert newick.endswith(";")
    assert newick.count("(") == newick.count(")") == data.tree.n_tips - 1
    assert all(name in newick for name in data.tree.tip_names)


# --- covariate signal ------------------------------------------------------------


def test_age_is_predictable_from_abundances(data):
    assert age_mae_ratio(data) < 0.6


def test_no_effect_means_no_age_signal():
    assert age_mae_ratio(simulate(effect_size=0.0, random_seed=0)) > 0.8


def test_site_is_recoverable_by_nearest_centroid(data):
    x = log_relative_abundance(data.counts)
    site = data.metadata["site"].to_numpy()
    train = np.arange(len(site)) < 150
    labels = np.unique(site[train])
    centroids = np.stack([x[train][site[train] == label].mean(axis=0) for label in labels])
    squared_distance = ((x[~train][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = (labels[squared_distance.argmin(axis=1)] == site[~train]).mean()
    assert accuracy > 0.8  # chance is 1/3


# --- UniFrac ---------------------------------------------------------------------


def test_unifrac_matrix_properties(data):
    d = data.unifrac.to_numpy()
    assert d.dtype == np.float64
    assert np.array_equal(d, d.T)
    assert (np.diag(d) == 0).all()
    assert d.min() >= 0 and d.max() <= 1
    assert d[~np.eye(len(d), dtype=bool)].min() > 0  # no two simulated samples coincide


@pytest.fixture
def three_tip_tree() -> Tree:
    # ((A:1,B:2)X:3,C:4)root ; nodes 0=A 1=B 2=C 3=X 4=root
    return Tree(parent=np.array([3, 3, 4, 4, -1]),
                branch_length=np.array([1.0, 2.0, 4.0, 3.0, 0.0]),
                tip_names=["A", "B", "C"])


def test_unifrac_hand_computed(three_tip_tree):
    presence = np.array([[1, 0, 0],   # A only: branches A, X -> 4
                         [0, 1, 0],   # B only: branches B, X -> 5
                         [1, 0, 1]],  # A and C: branches A, X, C -> 8
                        dtype=bool)
    d = unweighted_unifrac(presence, three_tip_tree)
    # s0 vs s1: shared X=3, union A+B+X=6 -> 3/6. s0 vs s2: shared A+X=4, union 8 -> 4/8.
    # s1 vs s2: shared X=3, union A+B+X+C=10 -> 7/10.
    expected = np.array([[0.0, 0.5, 0.5],
                         [0.5, 0.0, 0.7],
                         [0.5, 0.7, 0.0]])
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-12)


def test_unifrac_identical_samples_are_zero_and_disjoint_clades_are_one(three_tip_tree):
    presence = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    d = unweighted_unifrac(presence, three_tip_tree)
    assert d[0, 1] == 0.0
    # {A,B} vs {C}: root's two subtrees share no branch -> all observed length unique.
    assert d[0, 2] == pytest.approx(1.0)


def test_unifrac_empty_samples_are_zero_apart(three_tip_tree):
    presence = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)
    d = unweighted_unifrac(presence, three_tip_tree)
    assert d[0, 1] == 0.0 and d[0, 2] == 1.0
    assert not np.isnan(d).any()


def test_branch_presence_handles_any_node_numbering():
    # Same shape as the three-tip tree, but the root numbered before its child X.
    tree = Tree(parent=np.array([4, 4, 3, -1, 3]),
                branch_length=np.array([1.0, 2.0, 4.0, 0.0, 3.0]),
                tip_names=["A", "B", "C"])
    observed = branch_presence(np.array([[1, 0, 0]], dtype=bool), tree)[:, 0]
    assert observed.tolist() == [True, False, False, True, True]
    d = unweighted_unifrac(np.array([[1, 0, 0], [0, 1, 0]], dtype=bool), tree)
    assert d[0, 1] == pytest.approx(0.5)


def test_unifrac_matches_scikit_bio(data):
    skbio = pytest.importorskip("skbio")
    from skbio.diversity import beta_diversity

    tree = skbio.TreeNode.read(io.StringIO(data.tree.to_newick()))
    subset = data.counts.iloc[:40]
    reference = beta_diversity("unweighted_unifrac", subset.to_numpy(), ids=list(subset.index),
                               otu_ids=list(subset.columns), tree=tree)
    # Newick keeps 10 significant digits of each branch length, hence the tolerance.
    np.testing.assert_allclose(data.unifrac.to_numpy()[:40, :40], reference.data, atol=1e-8)


# --- parameter validation ----------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("n_asvs", 1), ("n_samples", 1), ("seq_length", 19), ("depth", 0),
    ("presence", 0.0), ("presence", 1.5), ("n_categories", 1), ("effect_size", -0.1),
    ("n_asvs", 2.5), ("effect_size", float("nan")),
])
def test_bad_parameter_raises_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        simulate(**{name: value})


# --- writing files -----------------------------------------------------------------


def test_write_round_trips(data, tmp_path):
    data.write(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["counts.tsv", "metadata.tsv", "sequences.fasta",
                                            "tree.nwk", "unifrac.tsv"]

    counts = pd.read_csv(tmp_path / "counts.tsv", sep="\t", index_col=0)
    assert counts.index.name == "sample-id"
    pd.testing.assert_frame_equal(counts, data.counts)

    lines = (tmp_path / "sequences.fasta").read_text().splitlines()
    read_back = dict(zip([line[1:] for line in lines[0::2]], lines[1::2]))
    assert read_back == data.sequences.to_dict()

    assert (tmp_path / "tree.nwk").read_text().strip() == data.tree.to_newick()

    metadata_lines = (tmp_path / "metadata.tsv").read_text().splitlines()
    assert metadata_lines[0] == "sample-id\tage\tsite"
    assert metadata_lines[1] == "#q2:types\tnumeric\tcategorical"
    metadata = pd.read_csv(tmp_path / "metadata.tsv", sep="\t", index_col=0, skiprows=[1])
    pd.testing.assert_frame_equal(metadata, data.metadata)

    unifrac_lines = (tmp_path / "unifrac.tsv").read_text().splitlines()
    assert unifrac_lines[0] == "\t" + "\t".join(data.unifrac.index)
    # The default C parser may be 1 ulp off; "round_trip" proves the file itself is exact.
    unifrac = pd.read_csv(tmp_path / "unifrac.tsv", sep="\t", index_col=0, float_precision="round_trip")
    np.testing.assert_array_equal(unifrac.to_numpy(), data.unifrac.to_numpy())
    assert list(unifrac.index) == list(data.unifrac.index)


# --- large sparse cohorts ------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(n_samples=300, n_asvs=2000, asvs_per_sample=(50, 300), random_seed=0)


def test_cohort_is_sparse_with_the_requested_asvs_per_sample(cohort):
    counts = cohort.counts
    assert isinstance(counts, scipy.sparse.csr_matrix) and counts.dtype == np.int64
    assert counts.shape == (300, 2000) and counts.has_sorted_indices
    per_sample = np.diff(counts.indptr)
    assert per_sample.min() >= 50 and per_sample.max() <= 300
    assert per_sample.max() - per_sample.min() > 150      # spread over the range
    assert (counts.data >= 1).all()
    assert 9000 < np.median(np.asarray(counts.sum(axis=1)).ravel()) < 11500   # ~depth reads


def test_cohort_ids_sequences_and_tree_line_up(cohort):
    import hashlib
    assert cohort.sample_ids == list(cohort.metadata.index) and cohort.sample_ids[0] == "sample-0001"
    assert cohort.feature_ids == list(cohort.sequences.index) == cohort.tree.tip_names
    assert cohort.sequences.nunique() == 2000 and (cohort.sequences.str.len() == 150).all()
    first = cohort.sequences.iloc[0]
    assert cohort.feature_ids[0] == hashlib.md5(first.encode()).hexdigest()
    tree = cohort.tree
    assert tree.n_nodes == 2 * tree.n_tips - 1 and (tree.parent < 0).sum() == 1
    assert (tree.parent[:-1] > np.arange(tree.n_nodes - 1)).all()     # parents numbered above
    assert set(cohort.metadata["site"]) == {"site-a", "site-b", "site-c"}


def test_cohort_is_determined_by_its_seed(cohort):
    again = simulate_cohort(n_samples=300, n_asvs=2000, random_seed=0)
    assert (again.counts != cohort.counts).nnz == 0
    assert again.tree.to_newick() == cohort.tree.to_newick()
    other = simulate_cohort(n_samples=300, n_asvs=2000, random_seed=1)
    assert not set(other.feature_ids) & set(cohort.feature_ids)


def test_cohort_unifrac_follows_age_and_site(cohort):
    d = cohort.unifrac().to_numpy()
    assert list(cohort.unifrac().index) == cohort.sample_ids
    rows, cols = np.triu_indices(len(d), k=1)
    age = cohort.metadata["age"].to_numpy()
    site = cohort.metadata["site"].to_numpy()
    age_gap = np.abs(age[rows] - age[cols])
    assert np.corrcoef(age_gap, d[rows, cols])[0, 1] > 0.3
    assert d[rows, cols][site[rows] == site[cols]].mean() < d[rows, cols][site[rows] != site[cols]].mean()
    weighted = cohort.unifrac("weighted_normalized").to_numpy()
    assert 0 < weighted[rows, cols].mean() < 1 and not np.allclose(weighted, d)


def test_fast_random_tree_is_rooted_and_binary():
    parent, length = random_tree_fast(500, np.random.default_rng(0))
    assert (parent < 0).sum() == 1 and parent[-1] == -1 and length[-1] == 0
    children = np.bincount(parent[parent >= 0], minlength=len(parent))
    assert (children[:500] == 0).all() and (children[500:] == 2).all()
    assert (length[:-1] > 0).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"asvs_per_sample": (0, 10)}, "asvs_per_sample"),
    ({"asvs_per_sample": (20, 10)}, "asvs_per_sample"),
    ({"n_asvs": 100, "asvs_per_sample": (50, 300)}, "asvs_per_sample"),
    ({"n_samples": 1}, "n_samples"),
])
def test_bad_cohort_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_cohort(**kwargs)
