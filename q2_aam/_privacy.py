"""strip-lookup: a regressor without its training samples' ASV sets and targets."""
from .core.bundle import ModelBundle
from .core.inputs import log, notice


def strip_lookup(model: ModelBundle) -> ModelBundle:
    from .core.privacy import stored_references, strip_lookup as core_strip
    n = stored_references(model)
    if n:
        log(f"Removed the look-up references of {n} training sample(s): the model now answers "
            "from its weights alone.")
    else:
        notice("The model stores no look-up references (its look-up was off, or already "
               "removed); it is returned unchanged but for the record of this strip.")
    return core_strip(model)
