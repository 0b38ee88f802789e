"""R-ROME (Gupta et al. 2024, "Rebuilding ROME"): ROME with one consistent key.

ROME's code builds the update direction C^-1 k from the prefix-averaged key but solves W k = v* for the
bare prompt's key; the asymmetry makes sequential edits blow up ("model collapse"). R-ROME uses the key
the model sees at evaluation - the bare prompt's - everywhere:

    Delta = (v* - W k) (C^-1 k)^T / ((C^-1 k)^T k),   k = MLP key of the unprefixed prompt.

The target value v* is still optimised over the prefixed prompts (targets.target_deltas).
"""

from __future__ import annotations

from dataclasses import dataclass

from intattn_tl.edit.transaction import EditState, WeightTransaction
from intattn_tl.methods.registry import register
from intattn_tl.methods.rome import ROMEHparams, rome_update
from intattn_tl.model.spec import LoadedModel


@dataclass
class RROMEHparams(ROMEHparams):
    pass


@register("r-rome", RROMEHparams, batch=False)
def run(model: LoadedModel, records, hp: RROMEHparams, tx: WeightTransaction, state: EditState) -> dict:
    (record,) = records
    layer, D, stats = rome_update(model, record, hp, state, consistent=True)
    tx.update("w_out", layer, D)
    return stats
