"""intattn-tl: locate and edit factual knowledge in language models, on TransformerLens 4.

```python
from intattn_tl import load_model, trace, summarize_trace, edit, evaluate, load_edits

model = load_model("smollm2-135m")
results = trace(model, [("The Eiffel Tower is located in the city of", "Eiffel Tower")])
result = edit(model, [("The Eiffel Tower is located in the city of", "Eiffel Tower", "Rome")], method="intattn")
result.rollback()
```
The package is laid out by stage, imports pointing one way (docs/design.md): `core` < `data` < `model` <
`evaluation` < `locate` < `edit` < `methods` < `config` < `api` < `repro` < `diagnostics` < `cli`.
"""

from intattn_tl.api import edit, trace
from intattn_tl.config.hparams import load_hparams
from intattn_tl.data.records import EditRecord, KnownFact, Probe, load_edits, load_known_facts
from intattn_tl.data.requests import EditRequest
from intattn_tl.edit.export import edit_card, export_model
from intattn_tl.edit.result import EditResult, apply_saved
from intattn_tl.edit.transaction import apply_deltas
from intattn_tl.errors import IntattnError
from intattn_tl.evaluation.metrics import EvalConfig, evaluate, locality_reference, summarize
from intattn_tl.locate.balance import summarize as summarize_trace
from intattn_tl.locate.tracing import TraceResult
from intattn_tl.model.load import load_model
from intattn_tl.model.registry import DEFAULT_MODEL, KNOWN_MODELS
from intattn_tl.model.spec import LoadedModel, ModelSpec
from intattn_tl.version import __version__

__all__ = [
    "DEFAULT_MODEL", "EditRecord", "EditRequest", "EditResult", "EvalConfig", "IntattnError", "KNOWN_MODELS",
    "KnownFact", "LoadedModel", "ModelSpec", "Probe", "TraceResult", "__version__", "apply_deltas", "apply_saved",
    "edit", "edit_card", "evaluate", "export_model", "load_edits", "load_hparams", "load_known_facts", "load_model",
    "locality_reference", "summarize", "summarize_trace", "trace",
]
