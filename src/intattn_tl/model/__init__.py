"""Models: `load` (load_model -> LoadedModel), `registry` (known models), `gguf` (GGUF out of PyPI wheels,
dequantised once into a verified cache), `tiny` (random test models), `spec` (LoadedModel, ModelSpec),
`devices` (split models), `tokens` (token positions), `families/` (one adapter per architecture)."""
