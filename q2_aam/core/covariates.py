"""Covariates: sample metadata that conditions a supervised model.

A fit given covariates (a DataFrame of metadata columns, one row per sample)
keeps a CovariateCodec in the model's info: the columns, their types, every
categorical column's categories and every numeric column's scaling
(standardized with the training split's mean and standard deviation, as the
target is). The model adds to each pooled sample embedding, before its heads,
a learned vector per category of each categorical column and a linear map of
the standardized numeric columns (model.CovariateEmbedding).

Each categorical column has a reserved 'unknown' category. A value never seen
in training is read as unknown at prediction (and counted in a notice). So that
unknown means something, training reads each training sample's category as
unknown at TrainConfig.covariate_unknown_rate (seeded, drawn anew every batch):
the unknown vector learns the answer for a sample whose category is not known.
A missing value (NaN or empty) is refused, never read as unknown: a missing
value usually means a metadata error, which silent handling would hide.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .inputs import few_ids, notice

CATEGORICAL, NUMERIC = "categorical", "numeric"


@dataclass(frozen=True)
class CovariateColumn:
    name: str
    kind: str                    # CATEGORICAL or NUMERIC
    categories: tuple = ()       # categorical: the training split's categories, sorted
    mean: float = 0.0            # numeric: values are read as (value - mean) / std
    std: float = 1.0


@dataclass
class CovariateValues:
    """A SampleSet's covariates, encoded: what its batches carry."""
    codes: np.ndarray        # [n, C] int64: rows of the model's category table
    numeric: np.ndarray      # [n, V] float32: standardized numeric columns
    unknown: np.ndarray      # [C] int64: each categorical column's unknown row

    def rows(self, indices, rng=None, unknown_rate=0.0):
        """(codes, numeric) tensors of the samples `indices`; with `unknown_rate`,
        each category is replaced by its column's unknown at that rate (`rng`)."""
        import torch
        codes = self.codes[indices]
        if unknown_rate > 0 and codes.shape[1]:
            hidden = rng.random(codes.shape) < unknown_rate
            codes = np.where(hidden, self.unknown[None, :], codes)
        return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(self.numeric[indices])


@dataclass(frozen=True)
class CovariateCodec:
    """How a model reads its covariates (see the module docstring)."""
    columns: tuple                # of CovariateColumn, in the order given

    @classmethod
    def from_frame(cls, frame, train_idx=None):
        """The codec of `frame` (rows: the fitted samples): numeric dtypes are
        numeric columns, any other categorical. Categories and scaling come
        from the rows `train_idx` (default all), so validation samples never
        shape them (their categories may be unknown)."""
        if len(frame.columns) == 0:
            raise ValueError("The covariates have no columns: give metadata with at least one "
                             "column, or no covariates.")
        check_complete(frame)
        fitted = frame if train_idx is None else frame.iloc[np.asarray(train_idx)]
        columns = []
        for name in frame.columns:
            if is_numeric(frame[name]):
                values = fitted[name].to_numpy(dtype=np.float64)
                std = float(values.std())
                columns.append(CovariateColumn(str(name), NUMERIC, mean=float(values.mean()),
                                               std=std if std > 0 else 1.0))
            else:
                categories = tuple(sorted(set(_labels(fitted[name]))))
                columns.append(CovariateColumn(str(name), CATEGORICAL, categories=categories))
        return cls(tuple(columns))

    @classmethod
    def from_info(cls, info):
        """The codec a model's info records (None when it has no covariates);
        ValueError naming the problem when the record is malformed."""
        record = info.get("covariates")
        if record is None:
            return None
        if not (isinstance(record, dict) and isinstance(record.get("columns"), list)
                and record["columns"]):
            raise ValueError("'covariates' must hold a non-empty list of 'columns'")
        columns = [_column_from_info(entry) for entry in record["columns"]]
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise ValueError(f"'covariates' names a column twice ({few_ids(names)})")
        return cls(tuple(columns))

    def to_info(self):
        return {"covariates": {"columns": [_column_to_info(c) for c in self.columns]}}

    @property
    def categorical(self):
        return [c for c in self.columns if c.kind == CATEGORICAL]

    @property
    def numeric(self):
        return [c for c in self.columns if c.kind == NUMERIC]

    @property
    def n_categories(self):
        """Rows of the model's category table: each categorical column's
        unknown, then its categories."""
        return sum(len(c.categories) + 1 for c in self.categorical)

    def model_choices(self):
        """The ModelConfig fields that size the model's covariate layers."""
        return {"covariate_categories": self.n_categories,
                "covariate_numeric": len(self.numeric)}

    def unknown_rows(self):
        """[C] int64: each categorical column's 'unknown' row (the first of its rows)."""
        sizes = [len(c.categories) + 1 for c in self.categorical]
        return (np.cumsum(sizes) - sizes).astype(np.int64)

    def encode(self, frame):
        """(CovariateValues of `frame`'s rows, {column: {unseen category: samples}}).
        `frame` must hold every column (extra ones are ignored) and no missing
        value in them."""
        absent = [c.name for c in self.columns if c.name not in frame.columns]
        if absent:
            raise ValueError(
                f"The covariates lack the column(s) {few_ids(absent)} that the model was fitted "
                f"with (it reads {few_ids([c.name for c in self.columns])}). Give covariates "
                "with every one of them.")
        check_complete(frame[[c.name for c in self.columns]])
        unknown = self.unknown_rows()
        codes, unseen = [], {}
        for column, first in zip(self.categorical, unknown):
            labels = _column_labels(frame[column.name], column.name, CATEGORICAL)
            position = {category: first + 1 + k for k, category in enumerate(column.categories)}
            codes.append([position.get(label, first) for label in labels])
            new = pd.Series([label for label in labels if label not in position], dtype=object)
            if len(new):
                unseen[column.name] = new.value_counts().to_dict()
        numeric = [(_column_labels(frame[c.name], c.name, NUMERIC) - c.mean) / c.std
                   for c in self.numeric]
        n = len(frame)
        values = CovariateValues(
            codes=np.array(codes, dtype=np.int64).T.reshape(n, len(codes)),
            numeric=np.array(numeric, dtype=np.float32).T.reshape(n, len(numeric)),
            unknown=unknown)
        return values, unseen

    def probe_frame(self, sample_ids):
        """Covariates for made-up samples: each column's first category (or, with
        none, a label read as unknown) or its training mean."""
        def value(column):
            if column.kind == NUMERIC:
                return column.mean
            return column.categories[0] if column.categories else "(unknown)"
        return pd.DataFrame({c.name: [value(c)] * len(sample_ids) for c in self.columns},
                            index=pd.Index(sample_ids))


# --- the samples' covariates ------------------------------------------------------------


def samples_with_covariates(sample_ids, frame, missing_samples):
    """The `sample_ids` that have a row in the covariates `frame`: with
    missing_samples 'error' every one must; with 'ignore' the others are left
    out (with a notice)."""
    present = set(frame.index)
    absent = [s for s in sample_ids if s not in present]
    if absent and missing_samples == "error":
        raise ValueError(
            f"{len(absent)} sample(s) are missing from the covariates: {few_ids(absent)}. Add "
            "them to the covariates metadata, filter the table, or use "
            "missing_samples='ignore'.")
    if absent:
        notice(f"Ignoring {len(absent)} sample(s) absent from the covariates: {few_ids(absent)}.")
    return [s for s in sample_ids if s in present]


def aligned(frame, sample_ids):
    """The rows of `frame` for `sample_ids`, in that order; every sample must have one."""
    absent = [s for s in sample_ids if s not in frame.index]
    if absent:
        raise ValueError(
            f"{len(absent)} sample(s) are missing from the covariates: {few_ids(absent)}. The "
            "model reads its covariates for every sample: add them to the covariates "
            "metadata, or filter the table.")
    return frame.loc[list(sample_ids)]


def refuse_target_column(frame, target):
    """The column a fit predicts must not also be one of its inputs."""
    if target in frame.columns:
        raise ValueError(
            f"The covariates include the column '{target}' that the model is to predict: it "
            "would be given the answer as an input. Give covariates without it (every "
            "column of the covariates metadata is used).")


def with_covariates(bundle, data, frame, log=None):
    """`data` carrying `bundle`'s covariates for its samples, read from `frame`
    (a DataFrame indexed by sample ID; None: none given). Unseen categories are
    read as unknown and counted in a notice."""
    codec = CovariateCodec.from_info(bundle.info)
    if codec is None:
        if frame is not None:
            notice("The model was fitted without covariates: the covariates given are not "
                   "used.")
        return data
    if frame is None:
        if data.covariates is not None:       # attached by the caller
            return data
        raise ValueError(
            f"This model was fitted with covariates (the column(s) "
            f"{few_ids([c.name for c in codec.columns])}) and needs them for every sample: give "
            "them (with QIIME 2: --m-covariates-file).")
    values, unseen = codec.encode(aligned(frame, data.sample_ids))
    if unseen:
        report_unseen(unseen, len(data), log)
    return data.replace(covariates=values)


def report_unseen(unseen, n_samples, log=None):
    parts = [f"'{name}': {sum(counts.values())} sample(s) with "
             f"{few_ids([f'{value!r}' for value in counts])}" for name, counts in unseen.items()]
    (log or notice)(
        f"Covariate categories never seen in training (of {n_samples} sample(s)), read as "
        f"the column's 'unknown' category: {'; '.join(parts)}.")


# --- checks -------------------------------------------------------------------------------




def check_complete(frame):
    """No missing value (NaN, empty, or an infinite number) in any column; a
    ValueError naming the samples and the column otherwise."""
    for name in frame.columns:
        column = frame[name]
        missing = column.isna() | (column.astype(str).str.strip() == "")
        if is_numeric(column):
            missing |= ~np.isfinite(column.to_numpy(dtype=np.float64))
        if missing.any():
            raise ValueError(
                f"The covariate column '{name}' has no value for {int(missing.sum())} "
                f"sample(s): {few_ids(frame.index[missing.to_numpy()])}. Every covariate needs a "
                "value for every sample: fill them in (a category such as 'not provided' is "
                "a category like any other), or leave those samples out.")


def is_numeric(column):
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _labels(column):
    return [str(value).strip() for value in column]


def _column_labels(column, name, kind):
    """A column's values as the model reads them: labels (categorical) or floats
    (numeric); a ValueError when its type is not the one it had in training."""
    if kind == CATEGORICAL:
        if is_numeric(column):
            raise ValueError(
                f"The covariate column '{name}' is numeric here but was categorical when the "
                "model was fitted. Declare it categorical (a '#q2:types' row with "
                "'categorical' in the metadata file).")
        return _labels(column)
    if not is_numeric(column):
        raise ValueError(
            f"The covariate column '{name}' is categorical here but was numeric when the "
            "model was fitted. Declare it numeric (a '#q2:types' row with 'numeric' in the "
            "metadata file), with numbers only.")
    return column.to_numpy(dtype=np.float64)


def _column_to_info(column):
    if column.kind == CATEGORICAL:
        return {"name": column.name, "type": CATEGORICAL, "categories": list(column.categories)}
    return {"name": column.name, "type": NUMERIC, "mean": column.mean, "std": column.std}


def _column_from_info(entry):
    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and entry.get("type") in (CATEGORICAL, NUMERIC)):
        raise ValueError("each covariate column needs a 'name' (a string) and a 'type' "
                         f"('{CATEGORICAL}' or '{NUMERIC}')")
    name = entry["name"]
    if entry["type"] == CATEGORICAL:
        categories = entry.get("categories")
        if not (isinstance(categories, list) and all(isinstance(c, str) for c in categories)
                and len(set(categories)) == len(categories)):
            raise ValueError(f"the categorical covariate '{name}' needs 'categories', a list "
                             "of distinct strings")
        return CovariateColumn(name, CATEGORICAL, categories=tuple(categories))
    mean, std = entry.get("mean"), entry.get("std")
    if not (_is_number(mean) and _is_number(std) and std > 0):
        raise ValueError(f"the numeric covariate '{name}' needs a finite 'mean' and a "
                         "positive, finite 'std'")
    return CovariateColumn(name, NUMERIC, mean=float(mean), std=float(std))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        np.isfinite(value)


def check_covariate_info(model_config, info):
    """The covariate record of `info` is well formed and sizes the model's
    covariate layers exactly; ValueError naming the problem otherwise."""
    codec = CovariateCodec.from_info(info)
    choices = codec.model_choices() if codec is not None else \
        {"covariate_categories": 0, "covariate_numeric": 0}
    if codec is not None and model_config.task == "encoder":
        raise ValueError("an encoder has no covariates")
    for name, expected in choices.items():
        if getattr(model_config, name) != expected:
            raise ValueError(f"the model configuration's {name} is "
                             f"{getattr(model_config, name)}, but its covariates "
                             f"{'record' if codec else '(none)'} need {expected}")
    return codec


__all__ = ["CovariateCodec", "CovariateColumn", "CovariateValues", "samples_with_covariates",
           "aligned", "refuse_target_column", "with_covariates", "check_complete",
           "check_covariate_info", "report_unseen"]
