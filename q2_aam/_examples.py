"""Usage examples (q2galaxy builds Galaxy tool tests from them) on simulated data.

Each example is sized to run in seconds.
"""
import functools

EXAMPLE_SIZE = dict(n_samples=24, n_asvs=40, seq_length=100, depth=500, random_seed=0)
TINY_MODEL = dict(embedding_dim=16, attention_heads=2, attention_layers=1, epochs=2,
                  batch_size=8, validation_fraction=0.25)


@functools.lru_cache(maxsize=None)
def simulated():
    from .core.simulate import simulate
    return simulate(**EXAMPLE_SIZE)


def to_views(sim):
    """Simulated data as the views QIIME 2 imports: biom.Table, DNA series,
    DistanceMatrix and Metadata."""
    import biom
    import pandas as pd
    import qiime2
    import skbio

    table = biom.Table(sim.counts.T.to_numpy(), observation_ids=list(sim.counts.columns),
                       sample_ids=list(sim.counts.index))
    sequences = pd.Series({k: skbio.DNA(v) for k, v in sim.sequences.items()})
    distances = skbio.DistanceMatrix(sim.unifrac.to_numpy(), ids=list(sim.unifrac.index))
    metadata = qiime2.Metadata(sim.metadata)
    return table, sequences, distances, metadata


def to_artifacts(sim):
    import qiime2
    table, sequences, distances, metadata = to_views(sim)
    return (qiime2.Artifact.import_data("FeatureTable[Frequency]", table),
            qiime2.Artifact.import_data("FeatureData[Sequence]", sequences),
            qiime2.Artifact.import_data("DistanceMatrix", distances),
            metadata)


def table_factory():
    return to_artifacts(simulated())[0]


def sequences_factory():
    return to_artifacts(simulated())[1]


def distance_matrix_factory():
    return to_artifacts(simulated())[2]


def metadata_factory():
    return to_artifacts(simulated())[3]


def pretrain_example(use):
    _encoder(use)


def _inputs(use):
    return (use.init_artifact("table", table_factory),
            use.init_artifact("sequences", sequences_factory))


def _fit(use, kind, column, name=None, **options):
    table, sequences = _inputs(use)
    metadata = use.init_metadata("metadata", metadata_factory)
    target = use.get_metadata_column(column, column, metadata)
    model, = use.action(
        use.UsageAction(plugin_id="aam", action_id=f"fit_{kind}"),
        use.UsageInputs(table=table, sequences=sequences, metadata=target, **TINY_MODEL,
                        **options),
        use.UsageOutputNames(model=name or kind))
    return model, table, sequences


def fit_regressor_example(use):
    _fit(use, "regressor", "age")


def fit_regressor_ensemble_example(use):
    # The binned loss and an ensemble: slower, and on large real data more accurate.
    _fit(use, "regressor", "age", name="ensemble_regressor", regression_loss="binned",
         ensemble_size=2)


def fit_classifier_example(use):
    _fit(use, "classifier", "site")


def predict_example(use):
    model, table, sequences = _fit(use, "regressor", "age")
    use.action(use.UsageAction(plugin_id="aam", action_id="predict"),
               use.UsageInputs(model=model, table=table, sequences=sequences),
               use.UsageOutputNames(predictions="predictions"))


def predict_probabilities_example(use):
    model, table, sequences = _fit(use, "classifier", "site")
    use.action(use.UsageAction(plugin_id="aam", action_id="predict_probabilities"),
               use.UsageInputs(model=model, table=table, sequences=sequences),
               use.UsageOutputNames(probabilities="probabilities"))


def _encoder(use):
    table, sequences = _inputs(use)
    distance_matrix = use.init_artifact("unweighted_unifrac", distance_matrix_factory)
    encoder, = use.action(
        use.UsageAction(plugin_id="aam", action_id="pretrain"),
        use.UsageInputs(table=table, sequences=sequences, distance_matrix=distance_matrix,
                        **TINY_MODEL),
        use.UsageOutputNames(encoder="encoder"))
    return encoder, table, sequences


def embed_example(use):
    encoder, table, sequences = _encoder(use)
    use.action(use.UsageAction(plugin_id="aam", action_id="embed"),
               use.UsageInputs(model=encoder, table=table, sequences=sequences),
               use.UsageOutputNames(embeddings="embeddings"))


def predict_distances_example(use):
    encoder, table, sequences = _encoder(use)
    use.action(use.UsageAction(plugin_id="aam", action_id="predict_distances"),
               use.UsageInputs(encoder=encoder, table=table, sequences=sequences),
               use.UsageOutputNames(distance_matrix="predicted_distances"))


def _pipeline(use, action_id, column, outputs):
    table, sequences = _inputs(use)
    metadata = use.init_metadata("metadata", metadata_factory)
    target = use.get_metadata_column(column, column, metadata)
    use.action(use.UsageAction(plugin_id="aam", action_id=action_id),
               use.UsageInputs(table=table, sequences=sequences, metadata=target, test_size=0.25,
                               **TINY_MODEL),
               use.UsageOutputNames(**{name: f"{column}-{name}" for name in outputs}))


def regress_samples_example(use):
    _pipeline(use, "regress_samples", "age", ("model", "predictions", "accuracy_results"))


def classify_samples_example(use):
    _pipeline(use, "classify_samples", "site",
              ("model", "predictions", "probabilities", "accuracy_results"))
