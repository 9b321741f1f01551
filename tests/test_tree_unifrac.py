"""UniFrac from the tree, per batch: equal to Striped UniFrac (Debian's `unifrac`,
what q2-diversity-lib runs), clear errors for bad trees, and the distance
sources a SampleSet reads batches from."""
import io

import numpy as np
import pytest
import scipy.sparse

from q2_aam.core import unifrac as core_unifrac
from q2_aam.core.simulate import simulate_cohort
from q2_aam.core.unifrac import (DenseDistances, Tree, TreeDistances, TreeUniFrac,
                                 tree_from_treenode)

REFERENCE = {"unweighted": "unweighted_fp64", "weighted_normalized": "weighted_normalized_fp64"}


@pytest.fixture(scope="module")
def cohort():
    """60 samples over 400 ASVs, with (a) some tips and one internal node on
    zero-length branches and (b) two added samples that share no ASV."""
    sim = simulate_cohort(n_samples=60, n_asvs=400, asvs_per_sample=(3, 40), random_seed=4)
    tree = sim.tree
    length = tree.branch_length.copy()
    length[:40:3] = 0.0                                    # tips 0, 3, ..., 39
    internal = tree.n_tips + 7
    length[internal] = 0.0
    tree = Tree(parent=tree.parent, branch_length=length, tip_names=tree.tip_names)
    extra = scipy.sparse.csr_matrix(
        (np.array([5, 1, 2, 7, 3]), np.array([0, 3, 50, 120, 200]), np.array([0, 3, 5])),
        shape=(2, 400))
    counts = scipy.sparse.vstack([sim.counts, extra], format="csr")
    sample_ids = sim.sample_ids + ["no-overlap-a", "no-overlap-b"]
    return counts, sample_ids, sim.feature_ids, tree


def striped_unifrac(counts, sample_ids, feature_ids, tree, metric, tmp_path):
    """The distances Debian's `unifrac` computes from a biom file and a newick file
    (skipped where it is absent: the core's own venv with the newest numpy)."""
    biom = pytest.importorskip("biom")
    h5py = pytest.importorskip("h5py")
    unifrac = pytest.importorskip("unifrac")
    table = biom.Table(counts.T.tocsr(), feature_ids, sample_ids)
    with h5py.File(tmp_path / "table.biom", "w") as fh:
        table.to_hdf5(fh, "q2-aam tests")
    (tmp_path / "tree.nwk").write_text(tree.to_newick() + "\n")
    result = getattr(unifrac, REFERENCE[metric])(str(tmp_path / "table.biom"),
                                                 str(tmp_path / "tree.nwk"))
    return result.filter(sample_ids).data


# --- equal to Striped UniFrac -------------------------------------------------------


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
def test_equals_striped_unifrac(cohort, metric, tmp_path):
    counts, sample_ids, feature_ids, tree = cohort
    # The fixture's special cases are really there.
    present = counts.toarray() > 0
    assert not (present[-1] & present[-2]).any()
    zero_tips = np.flatnonzero(tree.branch_length[:tree.n_tips] == 0)
    assert present[:, zero_tips].any()
    internal_zero = tree.n_tips + 7
    below = core_unifrac.branch_presence(present, tree)[internal_zero]
    assert below.any()

    reference = striped_unifrac(counts, sample_ids, feature_ids, tree, metric, tmp_path)
    ours = TreeUniFrac(tree, feature_ids, metric).distances(counts)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    # and through skbio's TreeNode, as the plugin will read a Phylogeny[Rooted]
    skbio = pytest.importorskip("skbio")
    node = skbio.TreeNode.read(io.StringIO(tree.to_newick()))
    again = TreeUniFrac(tree_from_treenode(node), feature_ids, metric).distances(counts)
    np.testing.assert_allclose(again, reference, rtol=0, atol=1e-6)
    assert reference[-1, -2] > 0


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
def test_small_trees_against_striped_unifrac(metric, tmp_path):
    """Hand-made shapes: a multifurcation, a root with one child above the
    table's features, a root branch length (ignored by both), unused tips."""
    skbio = pytest.importorskip("skbio")
    cases = [
        ("(A:1,B:2,(C:4,D:0.5,E:2):1);", [[1, 2, 0, 0, 0], [0, 0, 3, 4, 0], [1, 0, 0, 0, 9]]),
        ("(((A:1,B:2):3,C:4):2,(D:5,E:1):1):7;", [[1, 0, 3, 0, 0], [0, 5, 1, 0, 0],
                                                  [3, 0, 1, 0, 0]]),
        ("((A:0,B:0):0,(C:4,(D:0,E:1):2):1,F:3);", [[1, 0, 0, 0, 0], [3, 0, 1, 0, 0],
                                                    [0, 0, 1, 7, 0], [0, 3, 1, 0, 2]]),
    ]
    for newick, rows in cases:
        tree = tree_from_treenode(skbio.TreeNode.read(io.StringIO(newick)))
        counts = scipy.sparse.csr_matrix(np.array(rows, dtype=float))
        features, samples = list("ABCDE"), [f"s{i}" for i in range(len(rows))]
        reference = striped_unifrac(counts, samples, features, tree, metric, tmp_path)
        ours = TreeUniFrac(tree, features, metric).distances(counts)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12, err_msg=newick)


def test_hand_computed_weighted_normalized():
    # ((A:1,B:2)X:3,C:4); tip depths A 4, B 5, C 4.
    tree = Tree(parent=np.array([3, 3, 4, 4, -1]), branch_length=np.array([1.0, 2, 4, 3, 0]),
                tip_names=["A", "B", "C"])
    d = TreeUniFrac(tree, ["A", "B", "C"], "weighted_normalized").distances(
        np.array([[1, 1, 0], [0, 0, 2]]))
    # |p_i - p_j| per branch: A 0.5, B 0.5, X 1, C 1 -> 0.5 + 1 + 3 + 4 = 8.5;
    # denominator 0.5*4 + 0.5*5 + 1*4 = 8.5 -> 1. With [3, 1, 0] vs [1, 1, 0]:
    assert d[0, 1] == pytest.approx(1.0)
    d = TreeUniFrac(tree, ["A", "B", "C"], "weighted_normalized").distances(
        np.array([[3, 1, 0], [1, 1, 0]]))
    # A: |.75 - .5| * 1 = .25, B: |.25 - .5| * 2 = .5, X: 0 -> .75 / (4.25 + 4.5)
    assert d[0, 1] == pytest.approx(0.75 / 8.75)


def test_nothing_to_compare_is_zero_apart():
    """Two samples whose ASVs all sit on zero-length paths: Striped UniFrac
    returns NaN (0/0); here they are 0 apart, so a training loss stays finite."""
    tree = Tree(parent=np.array([3, 3, 4, 4, -1]), branch_length=np.array([0.0, 0, 4, 0, 0]),
                tip_names=["A", "B", "C"])
    for metric in core_unifrac.METRICS:
        d = TreeUniFrac(tree, ["A", "B", "C"], metric).distances(np.array([[1, 0, 0], [0, 2, 0],
                                                                           [0, 0, 1]]))
        assert d[0, 1] == 0.0 and d[0, 2] == 1.0 and not np.isnan(d).any()


def test_batch_equals_block_of_full_matrix(cohort):
    counts, _, feature_ids, tree = cohort
    for metric in core_unifrac.METRICS:
        source = TreeDistances(tree, feature_ids, counts, metric)
        full = source.submatrix(np.arange(counts.shape[0]))
        batch = np.random.default_rng(0).permutation(counts.shape[0])[:17]
        block = source.submatrix(batch)
        assert block.dtype == np.float32 and block.shape == (17, 17)
        np.testing.assert_array_equal(block, full[np.ix_(batch, batch)])


def test_chunked_work_gives_the_same_distances(cohort, monkeypatch):
    """Dense blocks and listed pairs are split to bound memory for large sets of
    samples; tiny limits force many splits."""
    counts, _, feature_ids, tree = cohort
    for metric in core_unifrac.METRICS:
        unifrac = TreeUniFrac(tree, feature_ids, metric)
        whole = unifrac.distances(counts)
        with monkeypatch.context() as patch:
            patch.setattr(core_unifrac, "_CHUNK_CELLS", 50)
            patch.setattr(core_unifrac, "_CHUNK_PAIRS", 7)
            np.testing.assert_allclose(unifrac.distances(counts), whole, rtol=0, atol=1e-12)


def test_features_in_other_column_order_give_the_same_distances(cohort):
    counts, _, feature_ids, tree = cohort
    order = np.random.default_rng(1).permutation(len(feature_ids))
    reordered = TreeUniFrac(tree, [feature_ids[i] for i in order]).distances(counts[:, order])
    np.testing.assert_allclose(reordered, TreeUniFrac(tree, feature_ids).distances(counts),
                               rtol=0, atol=1e-12)


class Node:
    """The duck type tree_from_treenode reads: children, length, name, postorder()."""

    def __init__(self, name=None, length=None, children=()):
        self.name, self.length, self.children = name, length, list(children)

    def postorder(self):
        stack, out = [(self, False)], []
        while stack:
            node, done = stack.pop()
            if done or not node.children:
                out.append(node)
            else:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.children))
        return out


def test_deep_tree_needs_no_recursion():
    """A caterpillar 3000 levels deep (Python's recursion limit is 1000)."""
    n = 3000
    node = Node("t0", 1.0)
    for i in range(1, n):
        node = Node(None, 0.5, [node, Node(f"t{i}", 1.0)])
    node.length = None
    tree = tree_from_treenode(node)
    assert tree.n_tips == n and tree.n_nodes == 2 * n - 1
    assert tree.to_newick().count("(") == n - 1
    # t0 (deepest) against t1: only the two tip branches differ -> 2 / (2 + shared).
    shared = 0.5 * (n - 2)                                 # branches above their parent
    d = TreeUniFrac(tree, ["t0", "t1"]).distances(np.eye(2))
    assert d[0, 1] == pytest.approx(2.0 / (2.0 + shared))


# --- errors ---------------------------------------------------------------------------


def test_too_deep_tree_is_refused_before_memory_runs_out(monkeypatch):
    n = 200
    # A caterpillar: internal nodes n..2n-2 form a chain up to the root 2n-2;
    # tips 0 and 1 hang off the deepest one, tip i off internal node n + i - 1.
    parent = np.r_[n, np.arange(n, 2 * n - 1), np.arange(n + 1, 2 * n - 1), -1]
    tree = Tree(parent=parent, branch_length=np.ones(2 * n - 1),
                tip_names=[f"t{i}" for i in range(n)])
    TreeUniFrac(tree, tree.tip_names)
    monkeypatch.setattr(core_unifrac, "MAX_ANCESTOR_PAIRS", 5000)
    with pytest.raises(ValueError, match="too deep.*precomputed UniFrac distance matrix"):
        TreeUniFrac(tree, tree.tip_names)


@pytest.fixture
def small_tree():
    return Tree(parent=np.array([3, 3, 4, 4, -1]), branch_length=np.array([1.0, 2, 4, 3, 0]),
                tip_names=["A", "B", "C"])


def test_missing_features_are_named_with_the_fix(small_tree):
    with pytest.raises(ValueError) as error:
        TreeUniFrac(small_tree, ["A", "B", "X1", "X2"])
    message = str(error.value)
    assert "2 of the table's 4 features" in message and "X1, X2" in message
    assert "align-to-tree-mafft-fasttree" in message


def test_tree_of_other_ids_is_explained(small_tree):
    hashed = ["9f3c1a2b", "77aa0e41"]
    with pytest.raises(ValueError, match="not the table's feature IDs") as error:
        TreeUniFrac(small_tree, hashed)
    assert "hashed or sequence IDs" in str(error.value) and "9f3c1a2b" in str(error.value)


@pytest.mark.parametrize("parent, match", [
    ([3, 3, 4, -1, -1], "must be rooted .* it has 2"),
    ([3, 3, 4, 4, 3], "must be rooted .* it has 0"),
    ([3, 3, 4, 1, -1], "cycle"),
    ([3, 3, 9, 4, -1], "outside the tree"),
])
def test_trees_that_are_not_one_rooted_tree(small_tree, parent, match):
    tree = Tree(np.array(parent), small_tree.branch_length, small_tree.tip_names)
    with pytest.raises(ValueError, match=match):
        TreeUniFrac(tree, ["A", "B", "C"])


@pytest.mark.parametrize("bad", [-0.5, np.nan, np.inf])
def test_bad_branch_lengths(small_tree, bad):
    length = small_tree.branch_length.copy()
    length[1] = bad
    with pytest.raises(ValueError, match="negative or not finite"):
        TreeUniFrac(Tree(small_tree.parent, length, small_tree.tip_names), ["A", "B", "C"])


def test_root_length_may_be_anything(small_tree):
    length = small_tree.branch_length.copy()
    length[4] = np.nan                                     # above the root: ignored
    d = TreeUniFrac(Tree(small_tree.parent, length, small_tree.tip_names), ["A", "B"]).distances(
        np.eye(2))
    assert d[0, 1] == pytest.approx(3.0 / 6.0)            # A + B unique, X shared


def test_missing_branch_length_and_unnamed_tips():
    with pytest.raises(ValueError, match="1 branch.* no length"):
        tree_from_treenode(Node(children=[Node("A", 1.0), Node("B")]))
    with pytest.raises(ValueError, match="no name"):
        tree_from_treenode(Node(children=[Node("A", 1.0), Node(None, 1.0)]))


def test_repeated_tip_names(small_tree):
    tree = Tree(small_tree.parent, small_tree.branch_length, ["A", "A", "C"])
    with pytest.raises(ValueError, match="unique.*repeated: A"):
        TreeUniFrac(tree, ["A", "C"])


def test_bad_metric_and_counts(small_tree):
    with pytest.raises(ValueError, match="metric must be one of unweighted, weighted_normalized"):
        TreeUniFrac(small_tree, ["A"], "weighted")
    with pytest.raises(ValueError, match="3 features"):
        TreeUniFrac(small_tree, ["A", "B", "C"]).distances(np.ones((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        TreeUniFrac(small_tree, ["A", "B", "C"]).distances(np.array([[1, -1, 0], [1, 0, 0]]))


# --- distance sources and the SampleSet -------------------------------------------------


def test_dense_source_and_tree_source_in_a_sample_set(cohort):
    from q2_aam.core.data import SampleSet
    counts, sample_ids, feature_ids, tree = cohort
    sequences = {f: "ACGT" * 10 for f in feature_ids}
    # asv_limit caps what the model reads, never what UniFrac sees.
    data = SampleSet(counts, sample_ids, feature_ids, sequences, max_bp=40, asv_limit=5)
    assert data.n_capped > 0
    source = TreeDistances(tree, data.feature_ids, data.counts)
    data.distances = source
    assert data.distances is source and data.distance_source is source
    idx = np.array([5, 0, 61, 33])
    expected = TreeUniFrac(tree, feature_ids).distances(counts)[np.ix_(idx, idx)]
    np.testing.assert_allclose(data.collate(idx).distances.numpy(), expected, atol=1e-6)

    matrix = np.random.default_rng(0).random((len(data), len(data))).astype(np.float32)
    data.distances = matrix
    assert data.distances is matrix and isinstance(data.distance_source, DenseDistances)
    np.testing.assert_array_equal(data.collate(idx).distances.numpy(), matrix[np.ix_(idx, idx)])
    data.distances = None
    assert data.collate(idx).distances is None
    with pytest.raises(ValueError, match="cover 3 samples; this set has 62"):
        data.distances = np.zeros((3, 3))


class CountingSource:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __len__(self):
        return len(self.inner)

    def submatrix(self, indices):
        self.calls.append(np.array(indices))
        return self.inner.submatrix(indices)


def test_validation_fit_uses_a_capped_seeded_subset_computed_once(cohort):
    import torch
    from q2_aam.core.config import ModelConfig
    from q2_aam.core.data import SampleSet
    from q2_aam.core.model import AAMModel
    from q2_aam.core.pretrain import evaluate_unifrac
    counts, sample_ids, feature_ids, tree = cohort
    rng = np.random.default_rng(0)
    sequences = {f: "".join(rng.choice(list("ACGT"), 30)) for f in feature_ids}
    data = SampleSet(counts, sample_ids, feature_ids, sequences, max_bp=30, asv_limit=64)
    data.distances = CountingSource(TreeDistances(tree, feature_ids, counts))
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1)).eval()
    evaluate = evaluate_unifrac(batch_size=8, max_samples=12)
    validation = np.arange(10, 50)
    metrics, detail = evaluate(model, data, validation, torch.device("cpu"))
    again, _ = evaluate(model, data, validation, torch.device("cpu"))
    assert again == metrics and np.isfinite(metrics["unifrac_r2"])
    big_calls = [c for c in data.distances.calls if len(c) > 8]   # batches are 8 or fewer
    assert len(big_calls) == 1 and len(big_calls[0]) == 12
    assert set(big_calls[0]) <= set(validation)
    used = set(detail["sample_a"]) | set(detail["sample_b"])
    assert used == {sample_ids[i] for i in big_calls[0]}
    assert len(detail) == 12 * 11 // 2
