"""Editing methods; importing this package registers each one with `editing.register`."""

from . import alphaedit, ft, intattn, memit, r_rome, rome  # noqa: F401
