"""The AAMModel directory format.

Level 'min' checks each file on its own, cheaply (config.json's structure, the
safetensors headers, the tables' shape). Level 'max' (`qiime tools import`,
`qiime tools validate`) proves that the model loads and answers: every check of
ModelBundle.load (the files agree with each other), then a run of the model on
a made-up sample. Whatever a hand-edited file holds, validation fails with a
ValidationError naming the file, never with another exception.
"""
import csv
import io

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
