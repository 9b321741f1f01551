"""regress-samples / classify-samples: split, fit, predict the test part, visualize."""
import biom
import numpy as np

from ._parameters import resolve_seed, takes_parameters


def _split(ctx, table, metadata, test_size, random_seed, missing_samples, stratify,
           validation_fraction=0.0, covariates=None):
    """Seeded train/test split of the table's samples that have a metadata value
    (and, with covariates, a row in them)."""
    from .core.data import split_indices
    from .core.inputs import sample_targets

    biom_table = table.view(biom.Table)
    sample_ids = list(biom_table.ids(axis="sample"))
    if covariates is not None:
        from .core.covariates import samples_with_covariates
        sample_ids = samples_with_covariates(sample_ids, covariates.to_dataframe(),
                                             missing_samples)
    ids, values = sample_targets(sample_ids, metadata, missing_samples)
    strata = None
    if stratify:
        classes, strata = np.unique(np.asarray(values, dtype=str), return_inverse=True)
        # One sample of each class goes to the test part, and the fit's own
        # stratified validation split needs two more in the training part.
        needed = 3 if validation_fraction > 0 else 2
        small = classes[np.bincount(strata) < needed]
        if len(small):
            raise ValueError(
                f"Class(es) {', '.join(small)} have fewer than {needed} samples, too few for a "
                "stratified train/test split (and validation split) by class. Remove or merge "
                "them" + (", or set validation_fraction to 0." if needed == 3 else "."))
    rng = np.random.default_rng([random_seed, 3])
    train_idx, test_idx = split_indices(len(ids), test_size, rng, strata=strata)
    if len(test_idx) == 0 or len(train_idx) < 2:
        raise ValueError(f"test_size={test_size} leaves {len(train_idx)} training and "
                         f"{len(test_idx)} test samples; both parts need samples.")
    parts = []
    for idx in (train_idx, test_idx):
        subset = biom_table.filter([ids[i] for i in idx], axis="sample", inplace=False)
        parts.append(ctx.make_artifact(table.type, subset))
    return parts


def _fit_and_predict(ctx, fit_action, table, sequences, metadata, parameters, **inputs):
    """Split (seeded), fit `fit_action` on the training part, predict the test part
    and summarize the model; returns the model, its test predictions, its summary and
    the arguments that apply it to the test part. The split and the fit share the
    seed, drawn once when random_state is not given."""
    seed = resolve_seed(parameters["random_state"])
    stratify = fit_action == "fit_classifier"
    train_table, test_table = _split(ctx, table, metadata, parameters["test_size"], seed,
                                     parameters["missing_samples"], stratify=stratify,
                                     validation_fraction=parameters["validation_fraction"],
                                     covariates=parameters["covariates"])
    fit_parameters = {k: v for k, v in parameters.items() if k != "test_size"}
    model, = ctx.get_action("aam", fit_action)(
        table=train_table, sequences=sequences, metadata=metadata, **inputs,
        **{**fit_parameters, "random_state": seed, "missing_samples": "ignore"})
    apply = dict(model=model, table=test_table, sequences=sequences,
                 covariates=parameters["covariates"], device=parameters["device"],
                 n_jobs=parameters["n_jobs"])
    predictions, = ctx.get_action("aam", "predict")(**apply)
    model_summary, = ctx.get_action("aam", "summarize")(model=model)
    return model, predictions, model_summary, apply


@takes_parameters("regress_samples")
def regress_samples(ctx, table, sequences, metadata, pretrained_encoder=None,
                    distance_matrix=None, phylogeny=None, **parameters):
    model, predictions, model_summary, _ = _fit_and_predict(
        ctx, "fit_regressor", table, sequences, metadata, parameters,
        pretrained_encoder=pretrained_encoder, distance_matrix=distance_matrix,
        phylogeny=phylogeny)
    accuracy_results, = ctx.get_action("aam", "scatterplot")(
        predictions=predictions, truth=metadata, missing_samples="ignore")
    return model, predictions, model_summary, accuracy_results


@takes_parameters("classify_samples")
def classify_samples(ctx, table, sequences, metadata, pretrained_encoder=None,
                     distance_matrix=None, phylogeny=None, **parameters):
    model, predictions, model_summary, apply = _fit_and_predict(
        ctx, "fit_classifier", table, sequences, metadata, parameters,
        pretrained_encoder=pretrained_encoder, distance_matrix=distance_matrix,
        phylogeny=phylogeny)
    probabilities, = ctx.get_action("aam", "predict_probabilities")(**apply)
    accuracy_results, = ctx.get_action("aam", "confusion_matrix")(
        predictions=predictions, truth=metadata, probabilities=probabilities,
        missing_samples="ignore")
    return model, predictions, model_summary, accuracy_results, probabilities
