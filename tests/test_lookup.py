"""Tests of the neighbour look-up (q2_aam.core.lookup) and of a regressor fitted with it."""
import numpy as np
import pytest

from q2_aam.core.bundle import ModelBundle
from q2_aam.core.config import ModelConfig, TrainConfig
from q2_aam.core.data import SampleSet
from q2_aam.core.lookup import TOLERANCES, NeighbourLookup, agreed_answer, choose_tolerance
from q2_aam.core.supervised import fit, predict

SEQUENCES = {f"f{k}": seq for k, seq in enumerate(
    ["ACGTACGTAA", "ACGTACGTCC", "ACGTACGTGG", "ACGTACGTTT", "TTTTACGTAA", "GGGGACGTAA"])}


def sample_set(counts, sequences=SEQUENCES):
    """SampleSet of a list of {feature: count} dicts (features named as in `sequences`)."""
    features = sorted(sequences)
    matrix = np.array([[row.get(f, 0) for f in features] for row in counts], dtype=float)
    return SampleSet(matrix, [f"s{k}" for k in range(len(counts))], features, sequences,
                     max_bp=20, asv_limit=64)


REFERENCES = sample_set([{"f0": 5, "f1": 3}, {"f0": 2, "f1": 1, "f2": 1}, {"f3": 4, "f4": 4},
                         {"f3": 1, "f5": 9}])
TARGETS = np.array([10.0, 11.0, 40.0, 60.0])


def test_neighbours_are_nearest_by_shared_asvs_matched_by_sequence():
    lookup = NeighbourLookup.from_samples(REFERENCES, range(4), TARGETS, neighbours=2)
    # The same sequences under other feature IDs, in another order.
    renamed = {f"asv-{k}": SEQUENCES[f"f{5 - k}"] for k in range(6)}
    query = sample_set([{"asv-5": 1, "asv-4": 1}, {"asv-2": 1, "asv-1": 1}], renamed)
    nearest = lookup.neighbour_targets(query)
    # {f0, f1}: reference 0 (Jaccard 1), then 1 (2/3); {f3, f4}: 2 (1), then 3 (1/3).
    np.testing.assert_array_equal(nearest, [[10.0, 11.0], [40.0, 60.0]])


def test_a_reference_sharing_no_asv_is_no_neighbour():
    lookup = NeighbourLookup.from_samples(REFERENCES, range(4), TARGETS, neighbours=2)
    unseen = sample_set([{"x": 3}], {"x": "CCCCCCCCCC"})
    nearest = lookup.neighbour_targets(unseen)
    assert np.isnan(nearest).all()
    answered, agree = agreed_answer(nearest, np.array([33.0]), tolerance=100.0)
    assert answered[0] == 33.0 and not agree[0]


def test_answer_replaces_only_where_the_neighbours_agree():
    neighbours = np.array([[10.0, 11.0, 10.5], [10.0, 40.0, 60.0]])
    answered, agree = agreed_answer(neighbours, np.array([20.0, 20.0]), tolerance=1.0)
    np.testing.assert_array_equal(agree, [True, False])
    np.testing.assert_allclose(answered, [10.5, 20.0])


def test_tolerance_is_chosen_on_held_out_errors_and_can_stay_off():
    true = np.array([10.0, 40.0, 25.0])
    model = np.array([14.0, 44.0, 26.0])
    # Neighbours that agree near the truth where the model is off by 4: a tolerance wins.
    helpful = np.array([[10.0, 10.2], [40.0, 40.3], [10.0, 60.0]])
    tolerance, errors = choose_tolerance(helpful, model, true, scale=2.0)
    assert tolerance == pytest.approx(min(t for t in np.asarray(TOLERANCES) * 2.0 if t >= 0.3))
    assert errors["none"] == pytest.approx(3.0)
    # Neighbours that agree far from the truth: none beats the model, so none is chosen.
    misleading = np.array([[30.0, 30.0], [10.0, 10.0], [50.0, 50.0]])
    assert choose_tolerance(misleading, model, true, scale=2.0)[0] is None


def test_arrays_round_trip_gives_the_same_neighbours():
    lookup = NeighbourLookup.from_samples(REFERENCES, [0, 2, 3], TARGETS[[0, 2, 3]], 2, 1.5)
    again = NeighbourLookup.from_arrays(lookup.to_arrays(), 2, 1.5)
    np.testing.assert_array_equal(again.neighbour_targets(REFERENCES),
                                  lookup.neighbour_targets(REFERENCES))


@pytest.fixture(scope="module")
def repeated_hosts():
    """Hosts sampled four times each: a host's samples share its private ASVs and
    its age, and ages do not follow the shared ASVs (the model alone cannot tell)."""
    rng = np.random.default_rng(0)
    bases = np.array(list("ACGT"))
    n_hosts, n_shared, n_private = 12, 6, 4
    n_features = n_shared + n_hosts * n_private
    sequences = {f"f{k}": "".join(rng.choice(bases, 40)) for k in range(n_features)}
    rows, ages, hosts = [], [], []
    host_ages = rng.uniform(20, 70, n_hosts)
    for host in range(n_hosts):
        private = n_shared + host * n_private + np.arange(n_private)
        for _ in range(4):
            row = np.zeros(n_features)
            row[rng.choice(n_shared, 3, replace=False)] = rng.integers(5, 50, 3)
            row[private] = rng.integers(5, 50, n_private)
            rows.append(row)
            ages.append(host_ages[host])
            hosts.append(host)
    data = SampleSet(np.array(rows), [f"s{k}" for k in range(len(rows))],
                     list(sequences), sequences, max_bp=40, asv_limit=64)
    return data, np.array(ages), np.array(hosts)


def test_fitted_regressor_answers_repeated_hosts_from_their_other_samples(repeated_hosts,
                                                                          tmp_path):
    data, ages, hosts = repeated_hosts
    model_cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1)
    train_cfg = TrainConfig(epochs=2, batch_size=8, validation_fraction=0.25, device="cpu",
                            nuc_mask_ratio=0.0, unifrac_penalty=0.0, regression_loss="mse")
    bundle = fit(data, ages, "regressor", model_cfg, train_cfg, lookup_neighbours=2,
                 log=lambda message: None)
    settings = bundle.info["neighbour_lookup"]
    assert settings["neighbours"] == 2 and settings["tolerance"] is not None
    assert settings["validation_mae"]["none"] > min(settings["validation_mae"].values())
    bundle.save(tmp_path / "model")
    loaded = ModelBundle.load(tmp_path / "model")
    messages = []
    predicted, _ = predict(loaded, data, device="cpu", log=messages.append)
    # Every sample's host has other samples among the references: all answered exactly.
    np.testing.assert_allclose(predicted, ages)
    assert messages == [f"{len(ages)} of {len(ages)} sample(s) answered by the neighbour look-up."]


def test_lookup_stays_off_without_a_validation_split(repeated_hosts):
    data, ages, _ = repeated_hosts
    model_cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1)
    train_cfg = TrainConfig(epochs=1, batch_size=8, validation_fraction=0.0, device="cpu",
                            nuc_mask_ratio=0.0, unifrac_penalty=0.0)
    messages = []
    bundle = fit(data, ages, "regressor", model_cfg, train_cfg, lookup_neighbours=3,
                 log=messages.append)
    assert bundle.lookup is None and bundle.info["neighbour_lookup"]["tolerance"] is None
    assert any("needs a validation split" in m for m in messages)


def test_an_ensemble_chooses_the_tolerance_on_every_members_validation_split(repeated_hosts):
    data, ages, _ = repeated_hosts
    model_cfg = ModelConfig(embedding_dim=16, attention_heads=2, attention_layers=1,
                            ensemble_size=2)
    train_cfg = TrainConfig(epochs=1, batch_size=8, validation_fraction=0.25, device="cpu",
                            nuc_mask_ratio=0.0, unifrac_penalty=0.0)
    bundle = fit(data, ages, "regressor", model_cfg, train_cfg, lookup_neighbours=2,
                 log=lambda message: None)
    assert bundle.info["neighbour_lookup"]["validation_samples"] == 2 * round(0.25 * len(ages))
    assert len(bundle.lookup["targets"]) == len(ages)      # every fitted sample a reference
