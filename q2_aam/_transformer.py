import pandas as pd
import qiime2

from .core.bundle import ModelBundle
from ._format import (INTERVAL_COLUMNS, AAMModelDirectoryFormat,
                      AAMPredictionIntervalsFormat)
from .plugin_setup import plugin


@plugin.register_transformer
def _1(ff: AAMModelDirectoryFormat) -> ModelBundle:
    # Only JSON, TSV and safetensors are read: nothing in the artifact is executed.
    return ModelBundle.load(str(ff.path))


@plugin.register_transformer
def _2(bundle: ModelBundle) -> AAMModelDirectoryFormat:
    ff = AAMModelDirectoryFormat()
    bundle.save(str(ff.path))
    return ff


@plugin.register_transformer
def _3(intervals: pd.DataFrame) -> AAMPredictionIntervalsFormat:
    """A DataFrame indexed by sample ID with the INTERVAL_COLUMNS."""
    missing = [c for c in INTERVAL_COLUMNS if c not in intervals.columns]
    if missing:
        raise ValueError(f"Prediction intervals need the columns {', '.join(INTERVAL_COLUMNS)}; "
                         f"{', '.join(missing)} missing.")
    ff = AAMPredictionIntervalsFormat()
    table = intervals[list(INTERVAL_COLUMNS)].astype(float)
    table.index = table.index.astype(str).rename("sample-id")
    with ff.open() as fh:
        table.to_csv(fh, sep="\t", float_format="%.10g")
    return ff


def _read_intervals(ff):
    with ff.open() as fh:
        # Text first, so that sample IDs stay as written ('001', 'NA').
        table = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    table = table.set_index(table.columns[0])
    table.index = table.index.rename("sample-id")
    return table.astype(float)


@plugin.register_transformer
def _4(ff: AAMPredictionIntervalsFormat) -> pd.DataFrame:
    return _read_intervals(ff)


@plugin.register_transformer
def _5(ff: AAMPredictionIntervalsFormat) -> qiime2.Metadata:
    # `qiime metadata tabulate` shows the intervals as a table of numeric columns.
    return qiime2.Metadata(_read_intervals(ff))
