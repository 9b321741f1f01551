"""Usage examples of the visualizers, on the simulated data of `_examples`.

Like those, each runs one action on inputs from factories. The prediction
artifacts are made up from the true metadata (with seeded noise and a few wrong
labels), so scatterplot and confusion-matrix need no trained model; summarize
reads the tiny encoder of `_examples.trained_model`. All run in seconds.
"""
from ._examples import (TINY_MODEL, distance_matrix_factory, encoder_factory,
                        metadata_factory, run_on_model, sequences_factory, simulated,
                        table_factory)

WRONG_LABEL_EVERY = 4   # every fourth sample gets the next site's label
PREDICTION_NOISE_SD = 5.0     # the made-up age predictions' error
# The made-up intervals: 80% of a normal error of that spread, so that they are calibrated.
INTERVAL_LEVEL, INTERVAL_Z = 0.8, 1.2816
# A range test of the tiny model: a short sweep, enough to draw the curve.
TINY_RANGE_TEST = dict(embedding_dim=TINY_MODEL["embedding_dim"],
                       attention_heads=TINY_MODEL["attention_heads"],
                       attention_layers=TINY_MODEL["attention_layers"],
                       batch_size=TINY_MODEL["batch_size"], steps=20)


def regressor_predictions_factory():
    import numpy as np
    import qiime2
    age = simulated().metadata["age"]
    return qiime2.Artifact.import_data("SampleData[RegressorPredictions]",
                                       _predicted_ages().rename("prediction").rename_axis("id"))


def _predicted_ages():
    import numpy as np
    age = simulated().metadata["age"]
    return age + np.random.default_rng(0).normal(0, PREDICTION_NOISE_SD, len(age))


def intervals_factory():
    import pandas as pd
    import qiime2
    predicted = _predicted_ages()
    half_width = INTERVAL_Z * PREDICTION_NOISE_SD
    intervals = pd.DataFrame({"prediction": predicted, "lower": predicted - half_width,
                              "upper": predicted + half_width, "level": INTERVAL_LEVEL})
    return qiime2.Artifact.import_data("SampleData[AAMPredictionIntervals]", intervals)


def _predicted_sites():
    site = simulated().metadata["site"]
    sites = sorted(site.unique())
    shifted = site.map(lambda label: sites[(sites.index(label) + 1) % len(sites)])
    wrong = [i % WRONG_LABEL_EVERY == 0 for i in range(len(site))]
    return site.where(~site.index.isin(site.index[wrong]), shifted), sites


def classifier_predictions_factory():
    import qiime2
    predicted, _ = _predicted_sites()
    return qiime2.Artifact.import_data("SampleData[ClassifierPredictions]",
                                       predicted.rename("prediction").rename_axis("id"))


def probabilities_factory():
    import pandas as pd
    import qiime2
    predicted, sites = _predicted_sites()
    # 0.7 on the predicted label, the rest shared by the others.
    rest = 0.3 / (len(sites) - 1)
    probabilities = pd.DataFrame({label: (predicted == label) * (0.7 - rest) + rest
                                  for label in sites}).rename_axis("id")
    return qiime2.Artifact.import_data("SampleData[Probabilities]", probabilities)


def against_truth(use, action_id, column, visualization, artifacts, metadata_name="metadata",
                  truth_name=None):
    """Run visualizer `action_id` on `artifacts` ({input: (name, factory)}) against the
    example metadata's `column`."""
    made = {name: use.init_artifact(artifact, factory)
            for name, (artifact, factory) in artifacts.items()}
    metadata = use.init_metadata(metadata_name, metadata_factory)
    truth = use.get_metadata_column(truth_name or column, column, metadata)
    # The predictions, then the truth, then the rest: the order the command shows.
    inputs = {"predictions": made.pop("predictions"), "truth": truth, **made}
    use.action(use.UsageAction(plugin_id="aam", action_id=action_id),
               use.UsageInputs(**inputs), use.UsageOutputNames(visualization=visualization))


def scatterplot_example(use):
    against_truth(use, "scatterplot", "age", "age_scatterplot",
                  {"predictions": ("predictions", regressor_predictions_factory)})


def scatterplot_intervals_example(use):
    # Names of its own: a usage driver may run both scatterplot examples in one namespace.
    against_truth(use, "scatterplot", "age", "age_scatterplot_intervals",
                  {"predictions": ("predicted_ages", regressor_predictions_factory),
                   "intervals": ("intervals", intervals_factory)},
                  metadata_name="sample_metadata", truth_name="true_age")


def confusion_matrix_example(use):
    against_truth(use, "confusion_matrix", "site", "site_confusion_matrix",
                  {"predictions": ("predictions", classifier_predictions_factory),
                   "probabilities": ("probabilities", probabilities_factory)})


def summarize_example(use):
    run_on_model(use, "summarize", "encoder", encoder_factory,
                 {"visualization": "encoder_summary"}, reads_table=False)


def find_learning_rate_pretraining_example(use):
    table = use.init_artifact("table", table_factory)
    sequences = use.init_artifact("sequences", sequences_factory)
    distance_matrix = use.init_artifact("unweighted_unifrac", distance_matrix_factory)
    use.action(use.UsageAction(plugin_id="aam", action_id="find_learning_rate"),
               use.UsageInputs(table=table, sequences=sequences, distance_matrix=distance_matrix,
                               **TINY_RANGE_TEST),
               use.UsageOutputNames(visualization="pretraining_range_test"))


def find_learning_rate_regression_example(use):
    table = use.init_artifact("table", table_factory)
    sequences = use.init_artifact("sequences", sequences_factory)
    metadata = use.init_metadata("metadata", metadata_factory)
    age = use.get_metadata_column("age", "age", metadata)
    use.action(use.UsageAction(plugin_id="aam", action_id="find_learning_rate"),
               use.UsageInputs(table=table, sequences=sequences, metadata=age,
                               **TINY_RANGE_TEST),
               use.UsageOutputNames(visualization="age_range_test"))
