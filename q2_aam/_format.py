import csv

import qiime2.plugin.model as model
from qiime2.plugin import ValidationError

from .core.bundle import check_weights, read_config


class AAMConfigFormat(model.TextFileFormat):
    def _validate_(self, level):
        try:
            read_config(str(self))
        except ValueError as err:
            raise ValidationError(str(err)) from err


class SafetensorsFormat(model.BinaryFileFormat):
    def _validate_(self, level):
        try:
            check_weights(str(self))
        except ValueError as err:
            raise ValidationError(str(err)) from err


class TrainingTableFormat(model.TextFileFormat):
    """A tab-separated table with a header row (history.tsv, validation.tsv)."""

    def _validate_(self, level):
        with self.open() as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        name = self.path.name
        if not rows or not rows[0]:
            raise ValidationError(f"{name} is empty; it needs a header row.")
        width = len(rows[0])
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != width:
                raise ValidationError(f"{name} line {number} has {len(row)} fields; "
                                      f"the header has {width}.")


class TensorBoardEventFormat(model.BinaryFileFormat):
    def _validate_(self, level):
        # A TFRecord starts with an 8-byte length and a 4-byte CRC.
        with self.open() as fh:
            if len(fh.read(12)) < 12:
                raise ValidationError(f"{self.path.name} is too short to be a TensorBoard event file.")


class AAMModelDirectoryFormat(model.DirectoryFormat):
    config = model.File("config.json", format=AAMConfigFormat)
    weights = model.File("model.safetensors", format=SafetensorsFormat)
    history = model.File("history.tsv", format=TrainingTableFormat)
    validation = model.File("validation.tsv", format=TrainingTableFormat, optional=True)
    lookup = model.File("lookup.safetensors", format=SafetensorsFormat, optional=True)
    events = model.FileCollection(r"tensorboard/.+", format=TensorBoardEventFormat, optional=True)

    @events.set_path_maker
    def events_path_maker(self, name):
        return f"tensorboard/{name}"
