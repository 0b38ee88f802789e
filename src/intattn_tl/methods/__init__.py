"""Editing methods: one module each (hparams dataclass + `run`), registered in `methods.registry`.

Importing this package imports every method module, so the registry is complete once it is imported.
"""

from intattn_tl.methods import alphaedit, ft, intattn, memit, r_rome, rome  # noqa: F401  (registers them)
from intattn_tl.methods.registry import METHODS, Method, get_method, register

__all__ = ["METHODS", "Method", "get_method", "register"]
