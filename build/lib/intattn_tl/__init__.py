"""intattn-tl: locate and edit factual knowledge in language models, on TransformerLens 4."""

from .data import EditRecord, KnownFact, Probe, load_edits, load_known_facts
from .models import DEFAULT_MODEL, KNOWN_MODELS, LoadedModel, ModelSpec, load_model

__all__ = [
    "DEFAULT_MODEL", "KNOWN_MODELS", "EditRecord", "KnownFact", "LoadedModel", "ModelSpec", "Probe",
    "load_edits", "load_known_facts", "load_model",
]
__version__ = "0.2.0"  # keep equal to pyproject.toml (tests/test_version.py)
