import importlib

from qiime2.plugin import (Choices, Citations, Float, Int, Plugin, Range, Str)
from q2_types.distance_matrix import DistanceMatrix
from q2_types.feature_data import FeatureData, Sequence
from q2_types.feature_table import FeatureTable, Frequency
from q2_types.sample_data import AlphaDiversity, SampleData

import q2_aam
from . import _examples
from ._format import (AAMConfigFormat, AAMModelDirectoryFormat, SafetensorsFormat,
                      TensorBoardEventFormat, TrainingTableFormat)
from ._pretrain import pretrain
from ._type import AAMModel, Classifier, Encoder, Regressor

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
    "learning_rate": "Peak learning rate of AdamW.",
    "weight_decay": "AdamW weight decay (matrices only; biases and norms are not decayed).",
    "warmup": "Fraction of all optimizer steps spent warming the learning rate up linearly "
              "before the cosine decay; a fraction, so it always ends on small data.",
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
               citations["lozupone2005unifrac"], citations["loshchilov2019adamw"]],
    examples={"pretrain_encoder": _examples.pretrain_example},
)

importlib.import_module("q2_aam._transformer")
