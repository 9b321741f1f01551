"""The AAMModel directory format, and the prediction intervals' TSV.

Level 'min' checks each file on its own, cheaply (config.json's structure, the
safetensors headers, the tables' shape). Level 'max' (`qiime tools import`,
`qiime tools validate`) proves that the model loads and answers: every check of
ModelBundle.load (the files agree with each other), then a run of the model on
a made-up sample. Whatever a hand-edited file holds, validation fails with a
ValidationError naming the file, never with another exception.
"""
import csv
import io
import math

import qiime2.plugin.model as model
from qiime2.plugin import ValidationError

from .core.bundle import ModelBundle, check_answers, check_weights, read_config


class AAMConfigFormat(model.TextFileFormat):
    def _validate_(self, level):
        try:
            read_config(str(self))
        except ValueError as err:
            raise ValidationError(str(err)) from err


class AAMSafetensorsFormat(model.BinaryFileFormat):
    def _validate_(self, level):
        try:
            check_weights(str(self), read_tensors=level == "max")
        except ValueError as err:
            raise ValidationError(str(err)) from err


class AAMTrainingTableFormat(model.TextFileFormat):
    """A tab-separated table with a header row (history.tsv, validation.tsv)."""

    def _validate_(self, level):
        name = self.path.name
        try:
            with self.path.open("rb") as fh:
                text = fh.read().decode("utf-8")
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
        except UnicodeDecodeError as err:
            raise ValidationError(f"{name} is not UTF-8 text: {err}.") from err
        except csv.Error as err:
            raise ValidationError(f"{name} is not a tab-separated table: {err}.") from err
        if not rows or not rows[0]:
            raise ValidationError(f"{name} is empty; it needs a header row.")
        width = len(rows[0])
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != width:
                raise ValidationError(f"{name} line {number} has {len(row)} fields; "
                                      f"the header has {width}.")


class AAMTensorBoardEventFormat(model.BinaryFileFormat):
    def _validate_(self, level):
        # A TFRecord starts with an 8-byte length and a 4-byte CRC.
        with self.open() as fh:
            if len(fh.read(12)) < 12:
                raise ValidationError(f"{self.path.name} is too short to be a TensorBoard event file.")


class AAMModelDirectoryFormat(model.DirectoryFormat):
    config = model.File("config.json", format=AAMConfigFormat)
    weights = model.File("model.safetensors", format=AAMSafetensorsFormat)
    history = model.File("history.tsv", format=AAMTrainingTableFormat)
    validation = model.File("validation.tsv", format=AAMTrainingTableFormat, optional=True)
    lookup = model.File("lookup.safetensors", format=AAMSafetensorsFormat, optional=True)
    events = model.FileCollection(r"tensorboard/.+", format=AAMTensorBoardEventFormat, optional=True)

    @events.set_path_maker
    def events_path_maker(self, name):
        return f"tensorboard/{name}"

    def _validate_(self, level):
        if level != "max":
            return
        try:
            check_answers(ModelBundle.load(str(self.path)))
        except ValueError as err:
            raise ValidationError(str(err)) from err


# The prediction intervals' columns after the sample ID, in this order.
INTERVAL_COLUMNS = ("prediction", "lower", "upper", "level")


class AAMPredictionIntervalsFormat(model.TextFileFormat):
    """A tab-separated table, one row per sample: sample ID, prediction, lower and
    upper bound, and the interval's level (a probability in (0, 1)). Level 'min'
    checks the first rows, 'max' every row."""

    def _validate_(self, level):
        from qiime2.metadata.base import is_id_header
        rows_checked = {"min": 10, "max": None}[level]
        with self.path.open("rb") as fh:
            try:
                text = fh.read().decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValidationError(f"The intervals are not UTF-8 text: {err}.") from err
        lines = text.splitlines()
        header = lines[0].split("\t") if lines else []
        if len(header) != 5 or not is_id_header(header[0]) or \
                tuple(header[1:]) != INTERVAL_COLUMNS:
            raise ValidationError(f"The intervals' header must be a sample ID column (e.g. "
                                  f"'sample-id') and then {', '.join(INTERVAL_COLUMNS)}, "
                                  f"tab-separated; it is {lines[0][:200] if lines else ''!r}.")
        body = lines[1:] if rows_checked is None else lines[1:1 + rows_checked]
        if not body:
            raise ValidationError("The intervals hold no sample: at least one row must follow "
                                  "the header.")
        for number, line in enumerate(body, start=2):
            _check_interval_row(line.split("\t"), number)


def _check_interval_row(cells, number):
    if len(cells) != 5 or not cells[0].strip():
        raise ValidationError(f"Line {number} of the intervals must hold a sample ID and 4 "
                              f"numbers; it holds {cells!r}.")
    try:
        prediction, lower, upper, level = (float(c) for c in cells[1:])
    except ValueError as err:
        raise ValidationError(f"Line {number} of the intervals holds a value that is not a "
                              f"number: {err}.") from err
    if not all(map(math.isfinite, (prediction, lower, upper))):
        raise ValidationError(f"Line {number}: prediction and bounds must be finite numbers.")
    if not lower <= prediction <= upper:
        raise ValidationError(f"Line {number}: the bounds must hold the prediction (lower <= "
                              f"prediction <= upper); got {lower} <= {prediction} <= {upper}.")
    if not 0 < level < 1:
        raise ValidationError(f"Line {number}: the level must be a probability strictly "
                              f"between 0 and 1; got {level}.")


AAMPredictionIntervalsDirectoryFormat = model.SingleFileDirectoryFormat(
    "AAMPredictionIntervalsDirectoryFormat", "intervals.tsv", AAMPredictionIntervalsFormat)
