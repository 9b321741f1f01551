import importlib

from q2_sample_classifier import ClassifierPredictions, Probabilities, RegressorPredictions
from q2_types.distance_matrix import DistanceMatrix
from q2_types.feature_data import FeatureData, Sequence
from q2_types.feature_table import FeatureTable, Frequency
from q2_types.ordination import PCoAResults
from q2_types.sample_data import AlphaDiversity, SampleData
from qiime2.plugin import (Bool, Categorical, Choices, Citations, Float, Int, MetadataColumn,
                           Numeric, Plugin, Range, Str, TypeMap, Visualization)

import q2_aam
from . import _examples, _visualizer_examples
from .core.config import MAX_KMER_SIZE, OPTIMIZERS, REGRESSION_LOSSES, SCHEDULERS
from ._format import (AAMConfigFormat, AAMModelDirectoryFormat, SafetensorsFormat,
                      TensorBoardEventFormat, TrainingTableFormat)
from ._lr_finder import find_learning_rate
from ._pipelines import classify_samples, regress_samples
from ._pretrain import pretrain
from ._supervised import (embed, fit_classifier, fit_regressor, predict, predict_distances,
                          predict_probabilities)
from ._type import AAMModel, Classifier, Encoder, Regressor
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

plugin.register_formats(AAMConfigFormat, SafetensorsFormat, TrainingTableFormat,
                        TensorBoardEventFormat, AAMModelDirectoryFormat)
plugin.register_semantic_types(AAMModel, Encoder)
plugin.register_semantic_type_to_format(AAMModel[Encoder | Regressor | Classifier],
                                        AAMModelDirectoryFormat)

# Architecture parameters: shared by pretrain and by the fits from scratch.
ARCHITECTURE_PARAMETERS = {
    "embedding_dim": Int % Range(8, None),
    "attention_heads": Int % Range(1, None),
    "attention_layers": Int % Range(1, None),
    "max_bp": Int % Range(1, None),
    "asv_limit": Int % Range(1, None),
}
ARCHITECTURE_DESCRIPTIONS = {
    "embedding_dim": "Width of every embedding (ASV, sample). Must be divisible by "
                     "attention_heads.",
    "attention_heads": "Attention heads in each transformer layer.",
    "attention_layers": "Transformer layers, in the nucleotide encoder and again in the "
                        "sample encoder.",
    "max_bp": "Sequences longer than this are truncated (the count is reported).",
    "asv_limit": "At most this many ASVs are read per sample: the most abundant are kept.",
}
TRAINING_PARAMETERS = {
    "batch_size": Int % Range(2, None),
    "epochs": Int % Range(1, None),
    "learning_rate": Float % Range(0, None, inclusive_start=False),
    "weight_decay": Float % Range(0, None),
    "optimizer": Str % Choices(list(OPTIMIZERS)),
    "scheduler": Str % Choices(list(SCHEDULERS)),
    "warmup": Float % Range(0, 1),
    "patience": Int % Range(1, None),
    "validation_fraction": Float % Range(0, 1),
    "max_grad_norm": Float % Range(0, None, inclusive_start=False),
    "gradient_accumulation_steps": Int % Range(1, None),
    "device": Str % Choices(["auto", "cpu", "cuda"]),
    "random_seed": Int,
    "tensorboard_dir": Str,
}
TRAINING_DESCRIPTIONS = {
    "batch_size": "Samples per batch (at least 2: the UniFrac loss compares pairs).",
    "epochs": "Maximum passes over the training samples.",
    "learning_rate": "Peak learning rate of the schedule. Its best value depends on the "
                     "optimizer, the batch size and the model: `qiime aam find-learning-rate` "
                     "suggests one.",
    "weight_decay": "Weight decay of the weight matrices (biases and norms are not decayed): "
                    "decoupled from the gradient for adamw and lion, an L2 penalty added to "
                    "the gradient for adam and sgd.",
    "optimizer": "'adamw': AdamW. 'adam': Adam. 'sgd': SGD with Nesterov momentum 0.9; it "
                 "usually needs a much larger learning rate than the Adam family. 'lion': "
                 "Lion (each weight moves by the learning rate, in the direction of the sign "
                 "of a mix of its gradient and momentum; betas 0.9 and 0.99); it wants a learning rate about 3-10x "
                 "smaller than AdamW's and a weight decay 3-10x larger.",
    "scheduler": "How the learning rate moves over the optimizer steps of the run. "
                 "'warmup_cosine': linear warmup, then cosine decay to 0. 'cosine': cosine "
                 "decay to 0 from the first step (warmup is not used). 'constant': linear "
                 "warmup, then constant. 'plateau': linear warmup, then halved whenever the "
                 "monitored loss (validation, else training) has not improved for a third of "
                 "patience epochs (at least 1). 'onecycle': one cycle, up from "
                 "learning_rate / 25 to learning_rate over the warmup fraction (0.3 when "
                 "warmup is 0), then cosine down to learning_rate / 250000.",
    "warmup": "Fraction of all optimizer steps spent warming the learning rate up linearly "
              "(or, for onecycle, rising to its peak); a fraction, so it always ends on small "
              "data.",
    "patience": "Stop when the validation loss has not improved for this many epochs; the "
                "best epoch's weights are kept.",
    "validation_fraction": "Fraction of samples held out, seeded by random_seed, for early "
                           "stopping and the reported validation metrics. 0 disables "
                           "validation (then the training loss is monitored).",
    "max_grad_norm": "Gradients are clipped to this global norm.",
    "gradient_accumulation_steps": "Batches whose gradients are summed per optimizer step "
                                   "(the scheduler counts optimizer steps).",
    "device": "'auto' uses a CUDA GPU when torch sees one (bf16 autocast), else the CPU "
              "(float32).",
    "random_seed": "Seed for initialization, the validation split, shuffling and masking: the "
                   "same seed gives the same model on the same hardware.",
    "tensorboard_dir": "Optional directory to write TensorBoard event files to during "
                       "training, for live monitoring with `tensorboard --logdir`. The event "
                       "files are also kept inside the output artifact.",
}

plugin.methods.register_function(
    function=pretrain,
    inputs={"table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence],
            "distance_matrix": DistanceMatrix,
            "faith_pd": SampleData[AlphaDiversity]},
    parameters={**ARCHITECTURE_PARAMETERS, **TRAINING_PARAMETERS,
                "nuc_mask_ratio": Float % Range(0, 1),
                "nuc_penalty": Float % Range(0, None),
                "unifrac_penalty": Float % Range(0, None),
                "zero_distance_weight": Float % Range(0, None)},
    outputs=[("encoder", AAMModel[Encoder])],
    input_descriptions={
        "table": "Feature table of the samples to learn from.",
        "sequences": "The DNA sequence of every feature in the table.",
        "distance_matrix": "UniFrac distances (values in [0, 1]) between the table's samples; "
                           "extra samples are ignored.",
        "faith_pd": "Optional Faith's phylogenetic diversity per sample, learned as an extra "
                    "target.",
    },
    parameter_descriptions={
        **ARCHITECTURE_DESCRIPTIONS, **TRAINING_DESCRIPTIONS,
        "nuc_mask_ratio": "Fraction of bases masked for the masked-nucleotide loss.",
        "nuc_penalty": "Weight of the masked-nucleotide loss.",
        "unifrac_penalty": "Weight of the UniFrac loss.",
        "zero_distance_weight": "Weight of sample pairs whose true distance is 0 in the "
                                "UniFrac loss (1 weighs them like any pair).",
    },
    output_descriptions={
        "encoder": "The pretrained encoder: best-epoch weights, configuration, training "
                   "history and TensorBoard event files.",
    },
    name="Pretrain an AAM encoder",
    description=("Self-supervised pretraining: sample embeddings learn to reproduce UniFrac "
                 "distances (the pairwise distance between two samples' embeddings predicts "
                 "their UniFrac), while a masked-nucleotide loss teaches the ASV encoder to "
                 "read DNA. Progress is shown with --verbose."),
    citations=[citations["vaswani2017attention"], citations["devlin2019bert"],
               citations["lozupone2005unifrac"], citations["loshchilov2019adamw"],
               citations["chen2023symbolic"]],
    examples={"pretrain_encoder": _examples.pretrain_example},
)

FIT_INPUTS = {"table": FeatureTable[Frequency], "sequences": FeatureData[Sequence],
              "pretrained_encoder": AAMModel[Encoder], "distance_matrix": DistanceMatrix}
FIT_INPUT_DESCRIPTIONS = {
    "table": "Feature table of the training samples.",
    "sequences": "The DNA sequence of every feature in the table.",
    "pretrained_encoder": "Optional encoder from `pretrain` to start from; its architecture "
                          "replaces the architecture parameters. Its ASV embeddings are "
                          "whitened with statistics of the training ASVs (stored in the "
                          "model), which made fits on real data markedly better.",
    "distance_matrix": "Optional UniFrac distances between the samples; when given, the "
                       "UniFrac loss is kept as an auxiliary loss (weight unifrac_penalty).",
}
FIT_PARAMETERS = {**ARCHITECTURE_PARAMETERS, **TRAINING_PARAMETERS,
                  "freeze_encoder": Bool,
                  "kmer_size": Int % Range(0, MAX_KMER_SIZE, inclusive_end=True),
                  "asv_dropout": Float % Range(0, 1),
                  "ensemble_size": Int % Range(1, None),
                  "missing_samples": Str % Choices(["error", "ignore"]),
                  "nuc_mask_ratio": Float % Range(0, 1),
                  "nuc_penalty": Float % Range(0, None),
                  "unifrac_penalty": Float % Range(0, None),
                  "zero_distance_weight": Float % Range(0, None)}
FIT_PARAMETER_DESCRIPTIONS = {
    **ARCHITECTURE_DESCRIPTIONS, **TRAINING_DESCRIPTIONS,
    "freeze_encoder": "Keep the pretrained nucleotide-level ASV encoder fixed: every distinct "
                      "ASV is embedded once for the whole run and only the sample level and "
                      "the prediction head train (much faster). Needs pretrained_encoder.",
    "kmer_size": "Length of the k-mers whose learned embeddings are added to each ASV's "
                 "transformer embedding (0: none). They let the fit tell individual ASVs "
                 "apart, which the pretrained embeddings do poorly; on real data 6-mers "
                 "lowered the held-out age error and raised the study accuracy of frozen "
                 "fits. Also used with a pretrained_encoder: the fit learns them.",
    "asv_dropout": "Fraction of each training sample's ASVs left out of every training "
                   "batch, drawn anew each time (a sample that would lose them all keeps "
                   "its most abundant one); never at validation or prediction. It keeps the "
                   "fit from leaning on single ASVs: on real data 0.5 lowered the held-out "
                   "age error of frozen fits with 6-mers (0.3 less, 0.7 not more).",
    "ensemble_size": "Number of models fitted one after the other, each with its own seed, "
                     "validation split and early stopping, and stored as one model that "
                     "answers with their pooled prediction (class or binned-target "
                     "probabilities averaged, other regressions averaged). Training takes "
                     "that many times longer. On real data, pooling 10 binned regressors "
                     "lowered the held-out age error of single fits by 0.03-0.37 years on "
                     "three splits of four, not on the fourth (see BENCHMARKS.md).",
    "missing_samples": "'error' if table samples are missing from the metadata; 'ignore' to "
                       "train on the samples that have metadata.",
    "nuc_mask_ratio": "Fraction of bases masked for an auxiliary masked-nucleotide loss; 0 "
                      "(the default) turns it off, since on simulated data it kept "
                      "from-scratch regressors from learning. Not used with freeze_encoder.",
    "nuc_penalty": "Weight of the auxiliary masked-nucleotide loss.",
    "unifrac_penalty": "Weight of the auxiliary UniFrac loss (only with distance_matrix).",
    "zero_distance_weight": "Weight of zero-distance pairs in the auxiliary UniFrac loss.",
}
REGRESSOR_PARAMETERS = {"regression_loss": Str % Choices(["auto", *REGRESSION_LOSSES]),
                        "lookup_neighbours": Int % Range(0, None)}
REGRESSOR_DESCRIPTIONS = {
    "regression_loss": "Loss on the standardized target: 'l1' (absolute error, fits the "
                       "conditional median), 'huber' (squared within one standard deviation, "
                       "absolute beyond), 'mse' (squared error) or 'binned' (the model "
                       "predicts a distribution over quantile bins of the training targets, "
                       "learned by cross-entropy, and answers with its median; on real data "
                       "with ~1500 training samples it lowered the held-out age error on all "
                       "four splits tried, on 160 "
                       "simulated samples it learned more slowly than 'l1'). 'auto' (the "
                       "default) takes 'l1' with a pretrained_encoder and 'mse' without one: "
                       "with a pretrained encoder 'l1' gave a clearly lower held-out MAE on "
                       "real data, while from scratch it stayed at the median for tens of "
                       "epochs (see BENCHMARKS.md).",
    "lookup_neighbours": "Neighbour look-up: where this many fitted samples nearest to a "
                         "sample (most ASVs shared, matched by sequence) agree on the target, "
                         "answer with their median instead of the model's prediction. It "
                         "recovers repeated samples of one host, whose private ASVs a model "
                         "reading sequences blurs. How closely they must agree is chosen on "
                         "the validation split, and the look-up stays off when no choice beats "
                         "the model there (so it needs validation_fraction > 0). The model then "
                         "stores its fitted samples' ASV sets and targets, and predicting those "
                         "samples themselves mostly returns their own targets. 0: off. On real "
                         "data it lowered the held-out age error on every split tried (see "
                         "BENCHMARKS.md)."}
FIT_CITATIONS = [citations["vaswani2017attention"], citations["loshchilov2019adamw"],
                 citations["chen2023symbolic"]]

plugin.methods.register_function(
    function=fit_regressor,
    inputs=FIT_INPUTS,
    parameters={**FIT_PARAMETERS, **REGRESSOR_PARAMETERS, "metadata": MetadataColumn[Numeric]},
    outputs=[("model", AAMModel[Regressor])],
    input_descriptions=FIT_INPUT_DESCRIPTIONS,
    parameter_descriptions={**FIT_PARAMETER_DESCRIPTIONS, **REGRESSOR_DESCRIPTIONS,
                            "metadata": "Numeric metadata column to predict."},
    output_descriptions={"model": "The trained regressor, with its target scaling, history, "
                                  "best-epoch validation predictions and, when the neighbour "
                                  "look-up is on, its fitted samples' ASV sets and targets."},
    name="Fit an AAM regressor",
    description=("Learn a numeric metadata column from the ASV sequences and abundances of each "
                 "sample. Targets are standardized with training-split statistics; predictions "
                 "come back in the column's units."),
    citations=FIT_CITATIONS,
    examples={"fit_regressor": _examples.fit_regressor_example,
              "fit_regressor_ensemble": _examples.fit_regressor_ensemble_example},
)
plugin.methods.register_function(
    function=fit_classifier,
    inputs=FIT_INPUTS,
    parameters={**FIT_PARAMETERS, "metadata": MetadataColumn[Categorical],
                "class_weights": Str % Choices(["none", "balanced"])},
    outputs=[("model", AAMModel[Classifier])],
    input_descriptions=FIT_INPUT_DESCRIPTIONS,
    parameter_descriptions={**FIT_PARAMETER_DESCRIPTIONS,
                            "metadata": "Categorical metadata column to predict.",
                            "class_weights": "'balanced' weighs each class inversely to its "
                                             "frequency in the training split."},
    output_descriptions={"model": "The trained classifier, with its class labels, history and "
                                  "best-epoch validation predictions."},
    name="Fit an AAM classifier",
    description=("Learn a categorical metadata column from the ASV sequences and abundances of "
                 "each sample. The validation split is stratified by class."),
    citations=FIT_CITATIONS,
    examples={"fit_classifier": _examples.fit_classifier_example},
)

T_model, T_predictions = TypeMap({
    AAMModel[Regressor]: SampleData[RegressorPredictions],
    AAMModel[Classifier]: SampleData[ClassifierPredictions],
})
APPLY_INPUT_DESCRIPTIONS = {
    "table": "Feature table of the samples to predict; features never seen in training are "
             "fine, since the model reads their sequences.",
    "sequences": "The DNA sequence of every feature in the table.",
}
DEVICE_DESCRIPTION = {"device": TRAINING_DESCRIPTIONS["device"]}

plugin.methods.register_function(
    function=predict,
    inputs={"model": T_model, "table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence]},
    parameters={"device": TRAINING_PARAMETERS["device"]},
    outputs=[("predictions", T_predictions)],
    input_descriptions={"model": "A regressor or classifier from fit-regressor/fit-classifier.",
                        **APPLY_INPUT_DESCRIPTIONS},
    parameter_descriptions=DEVICE_DESCRIPTION,
    output_descriptions={"predictions": "Predicted values (regressor) or labels (classifier), "
                                        "in q2-sample-classifier's types."},
    name="Predict sample metadata with an AAM model",
    description="Apply a trained regressor or classifier to new samples.",
    citations=[citations["bokulich2018q2sampleclassifier"]],
    examples={"predict": _examples.predict_example},
)
plugin.methods.register_function(
    function=predict_probabilities,
    inputs={"model": AAMModel[Classifier], "table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence]},
    parameters={"device": TRAINING_PARAMETERS["device"]},
    outputs=[("probabilities", SampleData[Probabilities])],
    input_descriptions={"model": "A classifier from fit-classifier.", **APPLY_INPUT_DESCRIPTIONS},
    parameter_descriptions=DEVICE_DESCRIPTION,
    output_descriptions={"probabilities": "Class probabilities per sample."},
    name="Predict class probabilities with an AAM classifier",
    description=("Class probabilities for new samples (a companion of predict, whose output "
                 "type depends on the model)."),
    citations=[citations["bokulich2018q2sampleclassifier"]],
    examples={"predict_probabilities": _examples.predict_probabilities_example},
)
plugin.methods.register_function(
    function=embed,
    inputs={"model": AAMModel[Encoder | Regressor | Classifier], "table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence]},
    parameters={"device": TRAINING_PARAMETERS["device"]},
    outputs=[("embeddings", PCoAResults)],
    input_descriptions={"model": "Any AAM model.", **APPLY_INPUT_DESCRIPTIONS},
    parameter_descriptions=DEVICE_DESCRIPTION,
    output_descriptions={"embeddings": "Sample embeddings as an ordination (principal axes of "
                                       "the embeddings), for `qiime emperor plot`."},
    name="Embed samples with an AAM model",
    description="Sample embeddings of any AAM model, as an ordination Emperor can show.",
    citations=[],
    examples={"embed": _examples.embed_example},
)
plugin.methods.register_function(
    function=predict_distances,
    inputs={"encoder": AAMModel[Encoder], "table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence]},
    parameters={"device": TRAINING_PARAMETERS["device"]},
    outputs=[("distance_matrix", DistanceMatrix)],
    input_descriptions={"encoder": "An encoder from pretrain.", **APPLY_INPUT_DESCRIPTIONS},
    parameter_descriptions=DEVICE_DESCRIPTION,
    output_descriptions={"distance_matrix": "Predicted UniFrac-like distances between the "
                                            "samples."},
    name="Predict UniFrac-like distances with an AAM encoder",
    description=("UniFrac-like distances between new samples from the encoder's sample "
                 "embeddings, without a phylogenetic tree."),
    citations=[citations["lozupone2005unifrac"]],
    examples={"predict_distances": _examples.predict_distances_example},
)

plugin.visualizers.register_function(
    function=scatterplot,
    inputs={"predictions": SampleData[RegressorPredictions]},
    parameters={"truth": MetadataColumn[Numeric]},
    input_descriptions={"predictions": "Predicted values, e.g. from `qiime aam predict` with a "
                                       "regressor."},
    parameter_descriptions={"truth": "The true values. Only samples present in both the "
                                     "predictions and this column are compared (the page "
                                     "says how many were left out)."},
    name="Scatter plot of predicted against true values",
    description=("Predicted against true values with the least-squares line and the dashed 1:1 "
                 "line; N, MAE, RMSE, R^2 and Pearson r; every sample's error in a table "
                 "and as TSV; the figure as PNG and SVG."),
    citations=[citations["bokulich2018q2sampleclassifier"]],
    examples={"scatterplot": _visualizer_examples.scatterplot_example},
)
plugin.visualizers.register_function(
    function=confusion_matrix,
    inputs={"predictions": SampleData[ClassifierPredictions],
            "probabilities": SampleData[Probabilities]},
    parameters={"truth": MetadataColumn[Categorical]},
    input_descriptions={
        "predictions": "Predicted labels, e.g. from `qiime aam predict` with a classifier.",
        "probabilities": "Optional class probabilities, e.g. from `qiime aam "
                         "predict-probabilities`, for one-vs-rest ROC curves with AUC.",
    },
    parameter_descriptions={"truth": "The true labels. Only samples present in both the "
                                     "predictions and this column are compared; it must hold "
                                     "at least two classes."},
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
    citations=[],
    examples={"summarize": _visualizer_examples.summarize_example},
)

plugin.visualizers.register_function(
    function=find_learning_rate,
    inputs={"table": FeatureTable[Frequency], "sequences": FeatureData[Sequence],
            "distance_matrix": DistanceMatrix},
    parameters={"metadata": MetadataColumn[Numeric | Categorical],
                "missing_samples": FIT_PARAMETERS["missing_samples"],
                **ARCHITECTURE_PARAMETERS,
                "kmer_size": FIT_PARAMETERS["kmer_size"],
                **{name: TRAINING_PARAMETERS[name] for name in (
                    "batch_size", "optimizer", "weight_decay", "device", "random_seed")},
                "min_learning_rate": Float % Range(0, None, inclusive_start=False),
                "max_learning_rate": Float % Range(0, None, inclusive_start=False),
                "steps": Int % Range(10, None)},
    input_descriptions={
        "table": "Feature table of the samples to train on.",
        "sequences": "The DNA sequence of every feature in the table.",
        "distance_matrix": "UniFrac distances between the table's samples: the test then "
                           "uses pretrain's UniFrac and masked-nucleotide losses (or, with "
                           "metadata, adds the UniFrac loss as the fits do).",
    },
    parameter_descriptions={
        "metadata": "A column to predict: numeric for fit-regressor's loss, categorical for "
                    "fit-classifier's. Give this, distance_matrix, or both.",
        "missing_samples": FIT_PARAMETER_DESCRIPTIONS["missing_samples"],
        **ARCHITECTURE_DESCRIPTIONS,
        "kmer_size": "As in the fits; used only with metadata (pretrain has no k-mer "
                     "embeddings).",
        **{name: TRAINING_DESCRIPTIONS[name] for name in (
            "batch_size", "optimizer", "weight_decay", "device")},
        "random_seed": "Seed for initialization, shuffling and masking.",
        "min_learning_rate": "The learning rate of the first step.",
        "max_learning_rate": "The learning rate of the last step; the sweep stops earlier "
                             "if the loss diverges.",
        "steps": "Optimizer steps (one batch each) of the sweep; the learning rate grows by "
                 "the same factor at each.",
    },
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
    "accuracy_results": "Predicted against true values of the test part.",
}
TEST_SIZE_DESCRIPTION = ("Fraction of samples held out as the test part (seeded by "
                         "random_seed; stratified by class for classification).")
plugin.pipelines.register_function(
    function=regress_samples,
    inputs={k: v for k, v in FIT_INPUTS.items()},
    parameters={**FIT_PARAMETERS, **REGRESSOR_PARAMETERS, "metadata": MetadataColumn[Numeric],
                "test_size": Float % Range(0, 1, inclusive_start=False)},
    outputs=[("model", AAMModel[Regressor]), ("predictions", SampleData[RegressorPredictions]),
             ("accuracy_results", Visualization)],
    input_descriptions=FIT_INPUT_DESCRIPTIONS,
    parameter_descriptions={**FIT_PARAMETER_DESCRIPTIONS, **REGRESSOR_DESCRIPTIONS,
                            "test_size": TEST_SIZE_DESCRIPTION,
                            "metadata": "Numeric metadata column to predict."},
    output_descriptions=PIPELINE_OUTPUT_DESCRIPTIONS,
    name="Train and test an AAM regressor",
    description=("Split the samples into training and test parts, fit a regressor on the "
                 "first, predict the second and plot predicted against true values."),
    citations=FIT_CITATIONS + [citations["bokulich2018q2sampleclassifier"]],
    examples={"regress_samples": _examples.regress_samples_example},
)
plugin.pipelines.register_function(
    function=classify_samples,
    inputs={k: v for k, v in FIT_INPUTS.items()},
    parameters={**FIT_PARAMETERS, "metadata": MetadataColumn[Categorical],
                "class_weights": Str % Choices(["none", "balanced"]),
                "test_size": Float % Range(0, 1, inclusive_start=False)},
    outputs=[("model", AAMModel[Classifier]), ("predictions", SampleData[ClassifierPredictions]),
             ("probabilities", SampleData[Probabilities]), ("accuracy_results", Visualization)],
    input_descriptions=FIT_INPUT_DESCRIPTIONS,
    parameter_descriptions={**FIT_PARAMETER_DESCRIPTIONS, "test_size": TEST_SIZE_DESCRIPTION,
                            "metadata": "Categorical metadata column to predict.",
                            "class_weights": "'balanced' weighs each class inversely to its "
                                             "frequency in the training split."},
    output_descriptions={**PIPELINE_OUTPUT_DESCRIPTIONS,
                         "probabilities": "Class probabilities for the test part."},
    name="Train and test an AAM classifier",
    description=("Split the samples (stratified by class) into training and test parts, fit a "
                 "classifier on the first, predict the second and show the confusion matrix."),
    citations=FIT_CITATIONS + [citations["bokulich2018q2sampleclassifier"]],
    examples={"classify_samples": _examples.classify_samples_example},
)

importlib.import_module("q2_aam._transformer")
