"""Hyperparameters: `hparams` (YAML defaults in `defaults/`, the traced α and layers in `traced/`, resolved
once into a method's typed dataclass)."""
