from qiime2.plugin import SemanticType
from q2_types.sample_data import SampleData
# Classifier and Regressor are q2-sample-classifier's type names; semantic type
# names are global in QIIME 2, so AAMModel admits theirs instead of redefining them.
from q2_sample_classifier import Classifier, Regressor

AAMModel = SemanticType("AAMModel", field_names="type",
                        field_members={"type": (Classifier, Regressor)})
Encoder = SemanticType("Encoder", variant_of=AAMModel.field["type"])
# A regressor's prediction with a lower and an upper bound per sample.
AAMPredictionIntervals = SemanticType("AAMPredictionIntervals",
                                      variant_of=SampleData.field["type"])

__all__ = ["AAMModel", "Encoder", "Classifier", "Regressor", "AAMPredictionIntervals"]
