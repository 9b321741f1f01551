"""predict-intervals: a regressor's prediction with a lower and an upper bound."""
import biom
import numpy as np
import pandas as pd

from .core.bundle import ModelBundle
from .core.inputs import notice
from ._parameters import takes_parameters
from ._supervised import _sample_set


@takes_parameters("predict_intervals")
def predict_intervals(model: ModelBundle, table: biom.Table, sequences: pd.Series,
                      **parameters) -> pd.DataFrame:
    from .core.inference import check_intervals, predict_intervals as core_intervals
    from .core.inputs import refuse_non_finite
    level = parameters["level"]
    check_intervals(model, level)      # before reading the table: the model decides
    data = _sample_set(model, table, sequences, parameters["covariates"])
    predicted, lower, upper = core_intervals(model, data, level, device=parameters["device"])
    refuse_non_finite(np.column_stack([predicted, lower, upper]), "predictions or bounds",
                      data.sample_ids, model)
    if model.lookup is not None:
        notice("The intervals and their predictions come from the model alone; `qiime aam "
               "predict` also consults the model's neighbour look-up, so its predictions can "
               "differ for samples whose fitted neighbours agree.")
    return pd.DataFrame({"prediction": predicted, "lower": lower, "upper": upper,
                         "level": level},
                        index=pd.Index(data.sample_ids, name="sample-id")).astype(float)
