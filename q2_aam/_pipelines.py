"""regress-samples / classify-samples: split, fit, predict the test part, visualize."""
import biom
import numpy as np


def _split(ctx, table, metadata, test_size, random_seed, missing_samples, stratify,
           validation_fraction=0.0):
    """Seeded train/test split of the table's samples that have a metadata value."""
    from .core.data import split_indices
    from ._supervised import _targets

    biom_table = table.view(biom.Table)
    ids, values = _targets(list(biom_table.ids(axis="sample")), metadata, missing_samples)
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
        parts.append(ctx.make_artifact("FeatureTable[Frequency]", subset))
    return parts


# The pipelines list every fit parameter explicitly: QIIME 2 reads the
# signature, and each parameter passes through to the fit unchanged.
def regress_samples(ctx, table, sequences, metadata, pretrained_encoder=None,
                    distance_matrix=None, test_size=0.2, freeze_encoder=False,
                    missing_samples="error", regression_loss="auto", lookup_neighbours=3,
                    kmer_size=6, asv_dropout=0.5, ensemble_size=1, embedding_dim=128,
                    attention_heads=4, attention_layers=4, max_bp=150, asv_limit=1024,
                    batch_size=32, epochs=100, learning_rate=3e-4, weight_decay=0.01,
                    optimizer="adamw", scheduler="warmup_cosine", warmup=0.05, patience=10,
                    validation_fraction=0.1, max_grad_norm=1.0, gradient_accumulation_steps=1,
                    nuc_mask_ratio=0.0, nuc_penalty=1.0, unifrac_penalty=1.0,
                    zero_distance_weight=1.0, device="auto", random_seed=0,
                    tensorboard_dir=None):
    fit_parameters = dict(locals())
    for name in ("ctx", "table", "sequences", "metadata", "test_size", "missing_samples"):
        fit_parameters.pop(name)
    train_table, test_table = _split(ctx, table, metadata, test_size, random_seed,
                                     missing_samples, stratify=False)
    model, = ctx.get_action("aam", "fit_regressor")(
        table=train_table, sequences=sequences, metadata=metadata, missing_samples="ignore",
        **fit_parameters)
    predictions, = ctx.get_action("aam", "predict")(
        model=model, table=test_table, sequences=sequences, device=device)
    accuracy_results, = ctx.get_action("aam", "scatterplot")(predictions=predictions,
                                                             truth=metadata)
    return model, predictions, accuracy_results


def classify_samples(ctx, table, sequences, metadata, pretrained_encoder=None,
                     distance_matrix=None, test_size=0.2, freeze_encoder=False,
                     missing_samples="error", class_weights="none", kmer_size=6,
                     asv_dropout=0.5, ensemble_size=1, embedding_dim=128,
                     attention_heads=4, attention_layers=4, max_bp=150, asv_limit=1024,
                     batch_size=32, epochs=100, learning_rate=3e-4, weight_decay=0.01,
                     optimizer="adamw", scheduler="warmup_cosine", warmup=0.05, patience=10,
                     validation_fraction=0.1, max_grad_norm=1.0,
                     gradient_accumulation_steps=1, nuc_mask_ratio=0.0, nuc_penalty=1.0,
                     unifrac_penalty=1.0, zero_distance_weight=1.0, device="auto",
                     random_seed=0, tensorboard_dir=None):
    fit_parameters = dict(locals())
    for name in ("ctx", "table", "sequences", "metadata", "test_size", "missing_samples"):
        fit_parameters.pop(name)
    train_table, test_table = _split(ctx, table, metadata, test_size, random_seed,
                                     missing_samples, stratify=True,
                                     validation_fraction=validation_fraction)
    model, = ctx.get_action("aam", "fit_classifier")(
        table=train_table, sequences=sequences, metadata=metadata, missing_samples="ignore",
        **fit_parameters)
    predictions, = ctx.get_action("aam", "predict")(
        model=model, table=test_table, sequences=sequences, device=device)
    probabilities, = ctx.get_action("aam", "predict_probabilities")(
        model=model, table=test_table, sequences=sequences, device=device)
    accuracy_results, = ctx.get_action("aam", "confusion_matrix")(
        predictions=predictions, truth=metadata, probabilities=probabilities)
    return model, predictions, probabilities, accuracy_results
