"""The toolkit's version (kept equal to pyproject.toml's; tests/test_version.py checks it)."""

__version__ = "0.2.0"
