"""What a fitted model reveals about its training samples, and removing it.

A regressor whose neighbour look-up is on (lookup.py) keeps every fitted
sample's ASV set (as sequence digests) and target: a model shared with others
shares those. `strip_lookup` gives the same model without them; it then
answers from its weights alone, exactly as a fit without the look-up would.
"""
from dataclasses import replace

from .bundle import LOOKUP_STRIPPED


def stored_references(bundle):
    """How many training samples' ASV sets and targets `bundle` stores (0: none)."""
    return 0 if bundle.lookup is None else len(bundle.lookup["targets"])


def strip_lookup(bundle):
    """`bundle` (a regressor) without its look-up references; its info records
    how many were removed (0 when it held none). The bundle given is unchanged."""
    if bundle.task != "regressor":
        raise ValueError(f"Only a regressor stores look-up references; this model is a "
                         f"{bundle.task}.")
    removed = stored_references(bundle) + \
        bundle.info.get(LOOKUP_STRIPPED, {}).get("references_removed", 0)
    info = {**bundle.info, LOOKUP_STRIPPED: {"references_removed": removed}}
    return replace(bundle, info=info, lookup=None)


__all__ = ["stored_references", "strip_lookup"]
