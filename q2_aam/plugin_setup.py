import importlib

from q2_sample_classifier import ClassifierPredictions, Probabilities, RegressorPredictions
from q2_types.distance_matrix import DistanceMatrix
from q2_types.feature_data import FeatureData, Sequence
from q2_types.feature_table import FeatureTable, Frequency, RelativeFrequency
from q2_types.ordination import PCoAResults
from q2_types.sample_data import AlphaDiversity, SampleData
from q2_types.tree import Phylogeny, Rooted
from qiime2.plugin import (Categorical, Citations, MetadataColumn, Numeric, Plugin, TypeMap,
                           Visualization)

import q2_aam
from . import _examples, _parameters, _visualizer_examples
from ._format import (AAMConfigFormat, AAMModelDirectoryFormat,
                      AAMPredictionIntervalsDirectoryFormat, AAMPredictionIntervalsFormat,
                      AAMSafetensorsFormat, AAMTensorBoardEventFormat, AAMTrainingTableFormat)
from ._intervals import predict_intervals
from ._lr_finder import find_learning_rate
from ._pipelines import classify_samples, regress_samples
from ._pretrain import pretrain
from ._privacy import strip_lookup
from ._supervised import (embed, fit_classifier, fit_regressor, predict, predict_distances,
                          predict_probabilities)
from ._type import AAMModel, AAMPredictionIntervals, Classifier, Encoder, Regressor
from ._visualizers import confusion_matrix, scatterplot, summarize

citations = Citations.load("citations.bib", package="q2_aam")

plugin = Plugin(
    name="aam",
    version=q2_aam.__version__,
    website="https://github.com/q2-aam/q2-aam",
    package="q2_aam",
    description=("Attention All Microbes (AAM): transformer models that read the DNA sequence "
                 "of every ASV in a sample. Pretrain an encoder whose sample embeddings "
                 "reproduce UniFrac, then predict sample metadata."),
    short_description="Transformer models of microbiome samples.",
    citations=[citations["vaswani2017attention"]],
)

plugin.register_formats(AAMConfigFormat, AAMSafetensorsFormat, AAMTrainingTableFormat,
                        AAMTensorBoardEventFormat, AAMModelDirectoryFormat,
                        AAMPredictionIntervalsFormat, AAMPredictionIntervalsDirectoryFormat)
plugin.register_semantic_types(AAMModel, Encoder, AAMPredictionIntervals)
ARTIFACT_CLASSES = {
    Encoder: "A pretrained AAM encoder (from `qiime aam pretrain`): a nucleotide transformer "
             "per ASV and a set transformer per sample whose embeddings reproduce UniFrac.",
    Regressor: "A fitted AAM regressor of a numeric metadata column, with its target scaling "
               "and, when its neighbour look-up is on, its training samples' ASV sets and "
               "targets (`qiime aam strip-lookup` removes them).",
    Classifier: "A fitted AAM classifier of a categorical metadata column, with its class "
                "labels.",
}
for kind, description in ARTIFACT_CLASSES.items():
    plugin.register_artifact_class(
        AAMModel[kind], AAMModelDirectoryFormat,
        description=description + " Stored as config.json, safetensors weights (no pickle), "
                                  "the training history and TensorBoard event files.")
plugin.register_artifact_class(
    SampleData[AAMPredictionIntervals], AAMPredictionIntervalsDirectoryFormat,
    description="A regressor's prediction intervals (from `qiime aam predict-intervals`): per "
                "sample the prediction, the lower and upper bound, and the interval's level. "
                "Viewable as metadata (`qiime metadata tabulate`); exported as a TSV file.")


PHYLOGENY_DESCRIPTION = (
    "The rooted phylogeny of the table's features (tips named by feature ID, e.g. from "
    "`qiime phylogeny align-to-tree-mafft-fasttree`): each batch's UniFrac (unifrac_metric) "
    "is computed from it during training, so no N x N distance matrix is ever held.")
TENSORBOARD_NOTE = (f"To follow training live in TensorBoard, set the environment variable "
                    f"{_parameters.TENSORBOARD_ENV} to a directory before running; the event "
                    "files are always kept inside the model artifact.")


def parameters(action, **extra):
    """An action's parameter types from the one table (_parameters.py), plus `extra`."""
    return {**_parameters.types(action), **extra}


def parameter_descriptions(action, **extra):
    return {**_parameters.descriptions(action), **extra}


plugin.methods.register_function(
    function=pretrain,
    inputs={"table": FeatureTable[Frequency | RelativeFrequency],
            "sequences": FeatureData[Sequence],
            "distance_matrix": DistanceMatrix,
            "phylogeny": Phylogeny[Rooted],
            "faith_pd": SampleData[AlphaDiversity]},
    parameters=parameters("pretrain"),
    outputs=[("encoder", AAMModel[Encoder])],
    input_descriptions={
        "table": "Feature table of the samples to learn from.",
        "sequences": "The DNA sequence of every feature in the table.",
        "distance_matrix": "UniFrac distances (values in [0, 1]) between the table's samples; "
                           "extra samples are ignored. Give this or phylogeny.",
        "phylogeny": PHYLOGENY_DESCRIPTION + " Give this or distance_matrix.",
        "faith_pd": "Optional Faith's phylogenetic diversity per sample, learned as an extra "
                    "target.",
    },
    parameter_descriptions=parameter_descriptions("pretrain"),
    output_descriptions={
        "encoder": "The pretrained encoder: best-epoch weights, configuration, training "
                   "history and TensorBoard event files.",
    },
    name="Pretrain an AAM encoder",
    description=("Self-supervised pretraining: sample embeddings learn to reproduce UniFrac "
                 "distances (the pairwise distance between two samples' embeddings predicts "
                 "their UniFrac), while a masked-nucleotide loss teaches the ASV encoder to "
                 "read DNA. Progress is shown with --verbose. " + TENSORBOARD_NOTE),
    citations=[citations["vaswani2017attention"], citations["devlin2019bert"],
               citations["lozupone2005unifrac"], citations["loshchilov2019adamw"],
               citations["chen2023symbolic"]],
    examples={"pretrain_encoder": _examples.pretrain_example},
)

FIT_INPUTS = {"table": FeatureTable[Frequency | RelativeFrequency],
              "sequences": FeatureData[Sequence],
              "pretrained_encoder": AAMModel[Encoder], "distance_matrix": DistanceMatrix,
              "phylogeny": Phylogeny[Rooted]}
FIT_INPUT_DESCRIPTIONS = {
    "table": "Feature table of the training samples (counts or relative frequencies: the "
             "model reads relative abundances).",
    "sequences": "The DNA sequence of every feature in the table.",
    "pretrained_encoder": "Optional encoder from `pretrain` to start from; its architecture "
                          "replaces the architecture parameters. Its ASV embeddings are "
                          "whitened with statistics of the training ASVs (stored in the "
                          "model).",
    "distance_matrix": "Optional UniFrac distances between the samples; when given, the "
                       "UniFrac loss is kept as an auxiliary loss (weight unifrac_penalty).",
    "phylogeny": "Optional, instead of distance_matrix: " + PHYLOGENY_DESCRIPTION,
}
FIT_CITATIONS = [citations["vaswani2017attention"], citations["loshchilov2019adamw"],
                 citations["chen2023symbolic"]]
REGRESSOR_TARGET = (MetadataColumn[Numeric], "Numeric metadata column to predict.")
CLASSIFIER_TARGET = (MetadataColumn[Categorical], "Categorical metadata column to predict.")


def register_training(register, function, target, outputs, output_descriptions, name,
                      description, citations, examples):
    """Register a fit or a pipeline (`register`: plugin.methods or plugin.pipelines):
    it reads the fit inputs and the metadata column `target` (type, description)."""
    action = function.__name__
    register.register_function(
        function=function,
        inputs=FIT_INPUTS,
        parameters=parameters(action, metadata=target[0]),
        outputs=outputs,
        input_descriptions=FIT_INPUT_DESCRIPTIONS,
        parameter_descriptions=parameter_descriptions(action, metadata=target[1]),
        output_descriptions=output_descriptions,
        name=name,
        description=description,
        citations=citations,
        examples=examples,
    )


register_training(
    plugin.methods, fit_regressor, REGRESSOR_TARGET,
    outputs=[("model", AAMModel[Regressor])],
    output_descriptions={"model": "The trained regressor, with its target scaling, history, "
                                  "best-epoch validation predictions and, when the neighbour "
                                  "look-up is on, its fitted samples' ASV sets and targets."},
    name="Fit an AAM regressor",
    description=("Learn a numeric metadata column from the ASV sequences and abundances of each "
                 "sample. Targets are standardized with training-split statistics; predictions "
                 "come back in the column's units. " + TENSORBOARD_NOTE),
    citations=FIT_CITATIONS,
    examples={"fit_regressor": _examples.fit_regressor_example,
              "fit_regressor_ensemble": _examples.fit_regressor_ensemble_example,
              "fit_regressor_covariates": _examples.fit_regressor_covariates_example})
register_training(
    plugin.methods, fit_classifier, CLASSIFIER_TARGET,
    outputs=[("model", AAMModel[Classifier])],
    output_descriptions={"model": "The trained classifier, with its class labels, history and "
                                  "best-epoch validation predictions."},
    name="Fit an AAM classifier",
    description=("Learn a categorical metadata column from the ASV sequences and abundances of "
                 "each sample. The validation split is stratified by class. "
                 + TENSORBOARD_NOTE),
    citations=FIT_CITATIONS,
    examples={"fit_classifier": _examples.fit_classifier_example})

T_model, T_predictions = TypeMap({
    AAMModel[Regressor]: SampleData[RegressorPredictions],
    AAMModel[Classifier]: SampleData[ClassifierPredictions],
})
APPLY_TABLE = FeatureTable[Frequency | RelativeFrequency]
APPLY_INPUT_DESCRIPTIONS = {
    "table": "Feature table of the samples to predict; features never seen in training are "
             "fine, since the model reads their sequences.",
    "sequences": "The DNA sequence of every feature in the table.",
}


def register_apply(function, model, model_description, output, output_description, name,
                   description, citations, model_input="model"):
    """Register a method that applies `model` (a type) to a table and its sequences,
    writing the one `output` (name, type); its parameters come from the table."""
    action = function.__name__
    plugin.methods.register_function(
        function=function,
        inputs={model_input: model, "table": APPLY_TABLE, "sequences": FeatureData[Sequence]},
        parameters=parameters(action),
        outputs=[output],
        input_descriptions={model_input: model_description, **APPLY_INPUT_DESCRIPTIONS},
        parameter_descriptions=parameter_descriptions(action),
        output_descriptions={output[0]: output_description},
        name=name,
        description=description,
        citations=citations,
        examples={action: getattr(_examples, f"{action}_example")},
    )


register_apply(
    predict, T_model,
    model_description="A regressor or classifier from fit-regressor/fit-classifier.",
    output=("predictions", T_predictions),
    output_description=("Predicted values (regressor) or labels (classifier), in "
                        "q2-sample-classifier's types."),
    name="Predict sample metadata with an AAM model",
    description="Apply a trained regressor or classifier to new samples.",
    citations=[citations["bokulich2018q2sampleclassifier"]])
register_apply(
    predict_probabilities, AAMModel[Classifier],
    model_description="A classifier from fit-classifier.",
    output=("probabilities", SampleData[Probabilities]),
    output_description="Class probabilities per sample.",
    name="Predict class probabilities with an AAM classifier",
    description=("Class probabilities for new samples (a companion of predict, whose output "
                 "type depends on the model)."),
    citations=[citations["bokulich2018q2sampleclassifier"]])
register_apply(
    predict_intervals, AAMModel[Regressor],
    model_description=("A regressor fitted with regression_loss 'binned' or 'quantile' (others "
                       "predict a single value, and are refused)."),
    output=("intervals", SampleData[AAMPredictionIntervals]),
    output_description=("Per sample: the prediction (the predicted median), the lower and "
                        "upper bound, and the level."),
    name="Predict with intervals from an AAM regressor",
    description=("Predictions with a lower and an upper bound per sample, meant to hold the "
                 "true value with probability `level`. The bounds are quantiles of the "
                 "distribution the model predicts: over bins (regression_loss 'binned'; its "
                 "CDF interpolated as for the binned median) or the predicted quantiles, "
                 "interpolated linearly (regression_loss 'quantile'). They are calibrated on "
                 "the fit's validation samples: the fit records where each validation "
                 "sample's true value fell in its predicted distribution, and the quantiles "
                 "taken are those that held the wanted share of them (for an ensemble, every "
                 "member's validation samples, pooled); a model fitted without validation "
                 "samples gives its raw quantiles. The prediction is the predicted median, "
                 "from the model alone (without its neighbour look-up). Show them with "
                 "`qiime metadata tabulate`, or as bars with `qiime aam scatterplot "
                 "--i-intervals`, which also reports their coverage of the true values."),
    citations=[citations["koenker1978regression"], citations["kuleshov2018accurate"]])
plugin.methods.register_function(
    function=strip_lookup,
    inputs={"model": AAMModel[Regressor]},
    parameters={},
    outputs=[("stripped_model", AAMModel[Regressor])],
    input_descriptions={"model": "A regressor from fit-regressor or regress-samples."},
    parameter_descriptions={},
    output_descriptions={"stripped_model": "The same regressor without its look-up "
                                           "references: it answers from its weights alone, and "
                                           "its information records how many references were "
                                           "removed."},
    name="Remove the training samples' ASV sets and targets from a regressor",
    description=("A regressor whose neighbour look-up is on (fit-regressor's "
                 "lookup_neighbours) stores every fitted sample's ASV set (as sequence "
                 "digests) and target, and anyone given the model can read them. This removes "
                 "them before a model is shared: predictions then come from the model alone. "
                 "The training sample IDs and the validation samples' predictions (with their "
                 "true values) stay in the model, as in every fitted model. `qiime aam "
                 "summarize` says whether a model stores references."),
    citations=[],
    examples={"strip_lookup": _examples.strip_lookup_example},
)
register_apply(
    embed, AAMModel[Encoder | Regressor | Classifier],
    model_description="Any AAM model.",
    output=("embeddings", PCoAResults),
    output_description=("Sample embeddings as an ordination (principal axes of the "
                        "embeddings), for `qiime emperor plot`."),
    name="Embed samples with an AAM model",
    description="Sample embeddings of any AAM model, as an ordination Emperor can show.",
    citations=[citations["vaswani2017attention"]])
register_apply(
    predict_distances, AAMModel[Encoder], model_input="encoder",
    model_description="An encoder from pretrain.",
    output=("distance_matrix", DistanceMatrix),
    output_description="Predicted UniFrac-like distances between the samples.",
    name="Predict UniFrac-like distances with an AAM encoder",
    description=("UniFrac-like distances between new samples from the encoder's sample "
                 "embeddings, without a phylogenetic tree."),
    citations=[citations["lozupone2005unifrac"]])

plugin.visualizers.register_function(
    function=scatterplot,
    inputs={"predictions": SampleData[RegressorPredictions],
            "intervals": SampleData[AAMPredictionIntervals]},
    parameters=parameters("scatterplot", truth=MetadataColumn[Numeric]),
    input_descriptions={"predictions": "Predicted values, e.g. from `qiime aam predict` with a "
                                       "regressor.",
                        "intervals": "Optional prediction intervals, from `qiime aam "
                                     "predict-intervals`: drawn as vertical bars at each "
                                     "sample's true value, and their empirical coverage of "
                                     "the true values shown (over the samples compared that "
                                     "have an interval)."},
    parameter_descriptions=parameter_descriptions(
        "scatterplot", truth="The true values (samples without a value are left out, and the "
                             "page says how many).",
        missing_samples="'error' if predicted samples are missing from the truth column; "
                        "'ignore' to compare only the samples present in both."),
    name="Scatter plot of predicted against true values",
    description=("Predicted against true values with the least-squares line and the dashed 1:1 "
                 "line; N, MAE, RMSE, R^2 and Pearson r; every sample's error in a table "
                 "and as TSV; the figure as PNG and SVG. Given intervals, their bars and "
                 "coverage."),
    citations=[citations["bokulich2018q2sampleclassifier"]],
    examples={"scatterplot": _visualizer_examples.scatterplot_example,
              "scatterplot_intervals": _visualizer_examples.scatterplot_intervals_example},
)
plugin.visualizers.register_function(
    function=confusion_matrix,
    inputs={"predictions": SampleData[ClassifierPredictions],
            "probabilities": SampleData[Probabilities]},
    parameters=parameters("confusion_matrix", truth=MetadataColumn[Categorical]),
    input_descriptions={
        "predictions": "Predicted labels, e.g. from `qiime aam predict` with a classifier.",
        "probabilities": "Optional class probabilities, e.g. from `qiime aam "
                         "predict-probabilities`, for one-vs-rest ROC curves with AUC.",
    },
    parameter_descriptions=parameter_descriptions(
        "confusion_matrix", truth="The true labels; they must hold at least two classes.",
        missing_samples="'error' if predicted samples are missing from the truth column; "
                        "'ignore' to compare only the samples present in both."),
    name="Confusion matrix of predicted against true labels",
    description=("A labelled heatmap of the confusion matrix (counts and row-normalized), "
                 "overall accuracy against the majority-class baseline, per-class precision, "
                 "recall, F1 and support with macro averages, and, given probabilities, "
                 "one-vs-rest ROC curves with AUC."),
    citations=[citations["bokulich2018q2sampleclassifier"]],
    examples={"confusion_matrix": _visualizer_examples.confusion_matrix_example},
)
plugin.visualizers.register_function(
    function=summarize,
    inputs={"model": AAMModel[Encoder | Regressor | Classifier]},
    parameters={},
    input_descriptions={"model": "A model from pretrain, fit-regressor or fit-classifier."},
    parameter_descriptions={},
    name="Summarize the training of an AAM model",
    description=("The model's configuration; training and validation curves of every "
                 "recorded loss and metric, and the learning rate, with the best epoch marked; "
                 "the validation predictions of the best epoch (predicted against true UniFrac "
                 "for an encoder, the scatter plot for a regressor, the confusion matrix for a "
                 "classifier); and the TensorBoard event files to download."),
    citations=[citations["vaswani2017attention"]],
    examples={"summarize": _visualizer_examples.summarize_example},
)

plugin.visualizers.register_function(
    function=find_learning_rate,
    inputs={"table": FeatureTable[Frequency | RelativeFrequency],
            "sequences": FeatureData[Sequence],
            "distance_matrix": DistanceMatrix},
    parameters=parameters("find_learning_rate", metadata=MetadataColumn[Numeric | Categorical]),
    input_descriptions={
        "table": "Feature table of the samples to train on.",
        "sequences": "The DNA sequence of every feature in the table.",
        "distance_matrix": "UniFrac distances between the table's samples: the test then "
                           "uses pretrain's UniFrac and masked-nucleotide losses (or, with "
                           "metadata, adds the UniFrac loss as the fits do).",
    },
    parameter_descriptions=parameter_descriptions(
        "find_learning_rate",
        metadata="A column to predict: numeric for fit-regressor's loss, categorical for "
                 "fit-classifier's. Give this, distance_matrix, or both.",
        kmer_size="As in the fits; used only with metadata (pretrain has no k-mer "
                  "embeddings)."),
    name="Find a learning rate with a range test",
    description=("The learning-rate range test: a throwaway model trains for a few hundred "
                 "steps while the learning rate grows exponentially from min_learning_rate "
                 "to max_learning_rate, stopping once the loss diverges. The page shows the "
                 "loss against the learning rate and suggests a peak learning rate for "
                 "pretrain, fit-regressor or fit-classifier with the same optimizer: a tenth "
                 "of the rate at the lowest smoothed loss."),
    citations=[citations["smith2017cyclical"], citations["chen2023symbolic"]],
    examples={"find_learning_rate_pretraining":
              _visualizer_examples.find_learning_rate_pretraining_example,
              "find_learning_rate_regression":
              _visualizer_examples.find_learning_rate_regression_example},
)

PIPELINE_OUTPUT_DESCRIPTIONS = {
    "model": "The model fitted on the training part.",
    "predictions": "Predictions for the held-out test part.",
    "model_summary": "The fitted model's training summary (as `qiime aam summarize`).",
    "accuracy_results": "Predicted against true values of the test part.",
}
register_training(
    plugin.pipelines, regress_samples, REGRESSOR_TARGET,
    outputs=[("model", AAMModel[Regressor]), ("predictions", SampleData[RegressorPredictions]),
             ("model_summary", Visualization), ("accuracy_results", Visualization)],
    output_descriptions=PIPELINE_OUTPUT_DESCRIPTIONS,
    name="Train and test an AAM regressor",
    description=("Split the samples into training and test parts, fit a regressor on the "
                 "first, predict the second and plot predicted against true values."),
    citations=FIT_CITATIONS + [citations["bokulich2018q2sampleclassifier"]],
    examples={"regress_samples": _examples.regress_samples_example})
register_training(
    plugin.pipelines, classify_samples, CLASSIFIER_TARGET,
    outputs=[("model", AAMModel[Classifier]), ("predictions", SampleData[ClassifierPredictions]),
             ("model_summary", Visualization), ("accuracy_results", Visualization),
             ("probabilities", SampleData[Probabilities])],
    output_descriptions={**PIPELINE_OUTPUT_DESCRIPTIONS,
                         "probabilities": "Class probabilities for the test part."},
    name="Train and test an AAM classifier",
    description=("Split the samples (stratified by class) into training and test parts, fit a "
                 "classifier on the first, predict the second and show the confusion matrix."),
    citations=FIT_CITATIONS + [citations["bokulich2018q2sampleclassifier"]],
    examples={"classify_samples": _examples.classify_samples_example})

importlib.import_module("q2_aam._transformer")
