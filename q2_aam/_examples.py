"""Usage examples (q2galaxy builds Galaxy tool tests from them) on simulated data.

Each example runs one action on inputs from `init_artifact` / `init_metadata`
factories: Galaxy runs one tool per test, so an example that trained a model
before predicting would name a file its tool test never gets. The models the
examples start from come from `trained_model`, a tiny model trained with the
core API in seconds. Each example is sized to run in seconds.
"""
import functools

EXAMPLE_SIZE = dict(n_samples=24, n_asvs=40, seq_length=100, depth=500, random_seed=0)
TINY_MODEL = dict(embedding_dim=16, attention_heads=2, attention_layers=1, epochs=2,
                  batch_size=8, validation_fraction=0.25)
TINY_ARCHITECTURE = ("embedding_dim", "attention_heads", "attention_layers")
# What each supervised example model predicts from the simulated metadata.
MODEL_TARGETS = {"regressor": "age", "classifier": "site"}
MODEL_TYPES = {"encoder": "AAMModel[Encoder]", "regressor": "AAMModel[Regressor]",
               "classifier": "AAMModel[Classifier]"}
# The look-up example's hosts are each sampled this often (copies of one sample).
SAMPLES_PER_HOST = 3


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


def site_factory():
    import qiime2
    return qiime2.Metadata(simulated().metadata[["site"]])


@functools.lru_cache(maxsize=None)
def trained_model(task, regression_loss="mse"):
    """An AAMModel artifact of `task` ('encoder', 'regressor' or 'classifier'),
    trained for TINY_MODEL's two epochs on the example data with the core API
    (no QIIME 2 action runs); a regressor with `regression_loss`. Cached, so
    each process trains each kind once."""
    import qiime2
    from .core.pretrain import pretrain
    from .core.supervised import fit

    if task not in MODEL_TYPES:
        raise ValueError(f"task must be one of {sorted(MODEL_TYPES)}, not {task!r}.")
    sim = simulated()
    model_cfg, train_cfg = _tiny_configs(task, regression_loss=regression_loss)
    data = _sample_set(sim.counts, sim.sequences, model_cfg)
    if task == "encoder":
        data.distances = sim.unifrac.loc[data.sample_ids, data.sample_ids].to_numpy("float32")
        bundle = pretrain(data, model_cfg, train_cfg, log=_discard)
    else:
        targets = sim.metadata[MODEL_TARGETS[task]].loc[data.sample_ids].to_numpy()
        bundle = fit(data, targets, task, model_cfg, train_cfg, log=_discard)
    return qiime2.Artifact.import_data(MODEL_TYPES[task], bundle)


@functools.lru_cache(maxsize=None)
def lookup_regressor():
    """A tiny AAMModel[Regressor] of age whose neighbour look-up is on: fitted
    on the example data with every host sampled SAMPLES_PER_HOST times, so the
    look-up (which finds a host's other samples) beats the model on the
    validation split and the model stores its fitted samples' ASV sets and ages."""
    import qiime2
    from .core.supervised import fit

    counts, ages = repeated_hosts()
    model_cfg, train_cfg = _tiny_configs("regressor")
    bundle = fit(_sample_set(counts, simulated().sequences, model_cfg), ages.to_numpy(),
                 "regressor", model_cfg, train_cfg, lookup_neighbours=SAMPLES_PER_HOST - 1,
                 log=_discard)
    if bundle.lookup is None:
        raise RuntimeError("The look-up example's regressor kept no look-up; its data no "
                           "longer make the look-up win on the validation split.")
    return qiime2.Artifact.import_data(MODEL_TYPES["regressor"], bundle)


def repeated_hosts():
    """The example data with every host sampled SAMPLES_PER_HOST times (copies
    named '<sample>.1', '<sample>.2', ...): (counts DataFrame, ages Series)."""
    import pandas as pd
    sim = simulated()
    copies = [lambda sample, k=k: f"{sample}.{k + 1}" for k in range(SAMPLES_PER_HOST)]
    return (pd.concat([sim.counts.rename(index=name) for name in copies]),
            pd.concat([sim.metadata["age"].rename(index=name) for name in copies]))


def _tiny_configs(task, **training):
    from .core.config import ModelConfig, TrainConfig
    model_cfg = ModelConfig(task=task, **{k: TINY_MODEL[k] for k in TINY_ARCHITECTURE})
    train_cfg = TrainConfig(device="cpu", **{k: v for k, v in TINY_MODEL.items()
                                             if k not in TINY_ARCHITECTURE}, **training)
    return model_cfg, train_cfg


def _sample_set(counts, sequences, model_cfg):
    from .core.data import SampleSet
    return SampleSet(counts.to_numpy(), counts.index, counts.columns, sequences,
                     model_cfg.max_bp, model_cfg.asv_limit)


def _discard(message):
    """The example models' training log: they are inputs, not results to read."""


def encoder_factory():
    return trained_model("encoder")


def regressor_factory():
    return trained_model("regressor")


def classifier_factory():
    return trained_model("classifier")


def quantile_regressor_factory():
    return trained_model("regressor", "quantile")


def lookup_regressor_factory():
    return lookup_regressor()


def _inputs(use):
    return (use.init_artifact("table", table_factory),
            use.init_artifact("sequences", sequences_factory))


def pretrain_example(use):
    table, sequences = _inputs(use)
    distance_matrix = use.init_artifact("unweighted_unifrac", distance_matrix_factory)
    use.action(
        use.UsageAction(plugin_id="aam", action_id="pretrain"),
        use.UsageInputs(table=table, sequences=sequences, distance_matrix=distance_matrix,
                        **TINY_MODEL),
        use.UsageOutputNames(encoder="encoder"))


def _fit(use, kind, column, name=None, **options):
    table, sequences = _inputs(use)
    metadata = use.init_metadata("metadata", metadata_factory)
    target = use.get_metadata_column(column, column, metadata)
    use.action(
        use.UsageAction(plugin_id="aam", action_id=f"fit_{kind}"),
        use.UsageInputs(table=table, sequences=sequences, metadata=target, **TINY_MODEL,
                        **options),
        use.UsageOutputNames(model=name or kind))


def fit_regressor_example(use):
    _fit(use, "regressor", "age")


def fit_regressor_ensemble_example(use):
    # The binned loss and an ensemble: slower, and on large real data more accurate.
    _fit(use, "regressor", "age", name="ensemble_regressor", regression_loss="binned",
         ensemble_size=2)


def fit_regressor_covariates_example(use):
    # The site each sample came from conditions the model; predict then needs it too.
    covariates = use.init_metadata("site_covariate", site_factory)
    _fit(use, "regressor", "age", name="site_conditioned_regressor", covariates=covariates)


def fit_classifier_example(use):
    _fit(use, "classifier", "site")


def run_on_model(use, action_id, model_name, model_factory, outputs, model_input="model",
                 reads_table=True, **parameters):
    """Run `action_id` on a model made by `model_factory` (and on the example table
    and sequences if the action `reads_table`)."""
    inputs = {model_input: use.init_artifact(model_name, model_factory)}
    if reads_table:
        inputs["table"], inputs["sequences"] = _inputs(use)
    inputs.update(parameters)
    use.action(use.UsageAction(plugin_id="aam", action_id=action_id),
               use.UsageInputs(**inputs), use.UsageOutputNames(**outputs))


def predict_example(use):
    run_on_model(use, "predict", "regressor", regressor_factory, {"predictions": "predictions"})


def predict_intervals_example(use):
    run_on_model(use, "predict_intervals", "quantile_regressor", quantile_regressor_factory,
                 {"intervals": "intervals"}, level=0.8)


def strip_lookup_example(use):
    run_on_model(use, "strip_lookup", "lookup_regressor", lookup_regressor_factory,
                 {"stripped_model": "stripped_regressor"}, reads_table=False)


def predict_probabilities_example(use):
    run_on_model(use, "predict_probabilities", "classifier", classifier_factory,
                 {"probabilities": "probabilities"})


def embed_example(use):
    run_on_model(use, "embed", "encoder", encoder_factory, {"embeddings": "embeddings"})


def predict_distances_example(use):
    run_on_model(use, "predict_distances", "encoder", encoder_factory,
                 {"distance_matrix": "predicted_distances"}, model_input="encoder")


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
