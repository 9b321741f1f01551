"""find-learning-rate: the learning-rate range test as a visualizer."""
import os

import biom
import pandas as pd
import qiime2
import skbio

from . import _figures
from .core.inputs import (attach_distances, build_sample_set, check_classes, log,
                          sample_set_with_targets)
from ._parameters import PARAMETERS, configs, resolve_seed, takes_parameters
from ._visualizers import render

# The parameters that set the model and the run; the others steer the sweep.
ACTION_PARAMETERS = [name for name in PARAMETERS
                     if PARAMETERS[name].destination in ("model", "train")]

# The action whose learning rate the test informs, and what its loss holds.
ACTIONS = {"encoder": "pretrain", "regressor": "fit-regressor", "classifier": "fit-classifier"}


@takes_parameters("find_learning_rate")
def find_learning_rate(output_dir: str, table: biom.Table, sequences: pd.Series,
                       distance_matrix: skbio.DistanceMatrix = None,
                       metadata: qiime2.MetadataColumn = None, **parameters) -> None:
    # torch loads only when an action runs: every `qiime` call imports every plugin.
    from .core.lr_finder import lr_range_test, steps_skipped

    min_learning_rate, max_learning_rate, steps, optimizer, batch_size = (
        parameters[k] for k in ("min_learning_rate", "max_learning_rate", "steps",
                                "optimizer", "batch_size"))
    if distance_matrix is None and metadata is None:
        raise ValueError("Give a distance_matrix (the range test of pretrain's losses), a "
                         "metadata column (of fit-regressor's or fit-classifier's), or both.")
    if min_learning_rate >= max_learning_rate:
        raise ValueError(f"min_learning_rate ({min_learning_rate}) must be smaller than "
                         f"max_learning_rate ({max_learning_rate}).")
    # Built as the action it informs builds its model and run: pretrain has no
    # k-mer embeddings and masks bases, the fits' presets do neither.
    preset = "pretrain" if metadata is None else "fit"
    model_cfg, train_cfg, _ = configs(
        preset, {k: v for k, v in parameters.items()
                 if k in ACTION_PARAMETERS and (preset == "fit" or k != "kmer_size")},
        random_seed=resolve_seed(parameters["random_state"]))
    task, data, targets, losses = _range_test_inputs(table, sequences, distance_matrix,
                                                     metadata, model_cfg, parameters)
    log(f"Range test of {losses} on {len(data)} samples.")
    result = lr_range_test(data, targets, task, model_cfg, train_cfg, min_learning_rate,
                           max_learning_rate, steps, log=log)

    curve = result.curve
    curve.to_csv(os.path.join(output_dir, "range_test.tsv"), sep="\t", index=False)
    _figures.learning_rate_sweep(output_dir, "range_test", curve,
                                 result.suggested_learning_rate,
                                 result.lowest_loss_learning_rate)
    suggested = f"{result.suggested_learning_rate:.2g}"
    render("find_learning_rate", output_dir, task=task, action=ACTIONS[task], losses=losses,
            optimizer=optimizer, suggested=suggested,
            lowest=f"{result.lowest_loss_learning_rate:.2g}",
            command=f"--p-optimizer {optimizer} --p-learning-rate {suggested}",
            notes=list(_curve_notes(result, max_learning_rate, steps_skipped(steps))),
            n_samples=len(data), batch_size=batch_size, steps_run=len(curve), steps=steps,
            min_learning_rate=f"{min_learning_rate:g}", max_learning_rate=f"{max_learning_rate:g}",
            diverged=result.diverged)


def _range_test_inputs(table, sequences, distance_matrix, metadata, model_cfg, parameters):
    """(task, SampleSet, targets, what the losses are) of the range test: the
    encoder's without metadata, else the regressor's or classifier's."""
    if metadata is None:
        task, targets = "encoder", None
        data = build_sample_set(table, sequences, model_cfg.max_bp, model_cfg.asv_limit,
                                min_samples=2)
        losses = "the UniFrac and masked-nucleotide losses of pretrain"
    else:
        task = "regressor" if isinstance(metadata, qiime2.NumericMetadataColumn) else "classifier"
        data, targets = sample_set_with_targets(table, sequences, metadata,
                                                parameters["missing_samples"],
                                                model_cfg.max_bp, model_cfg.asv_limit)
        if task == "classifier":
            check_classes(targets, validation_fraction=0.0)
        losses = (f"the {'regression' if task == 'regressor' else 'classification'} loss of "
                  f"'{metadata.name}'" + (", with the UniFrac loss" if distance_matrix is not None
                                          else ""))
    if distance_matrix is not None:
        attach_distances(data, distance_matrix)
    return task, data, targets, losses


def _curve_notes(result, max_learning_rate, skipped):
    """Warnings for the curves whose lowest point says little."""
    rates = result.curve["learning_rate"].to_numpy()
    lowest = result.lowest_loss_learning_rate
    if not result.diverged and lowest == rates[-1]:
        yield (f"The loss was still falling at the largest rate tried "
               f"({max_learning_rate:g}), so the suggestion may be too cautious: run the test "
               "again with a larger max_learning_rate to see where the loss turns.")
    if lowest == rates[min(skipped, len(rates) - 1)]:
        yield ("The smoothed loss never fell below its value at the start of the sweep: the "
               "suggestion rests on no real minimum. Try a smaller min_learning_rate or more "
               "steps, or check that the inputs hold something the model can learn.")
