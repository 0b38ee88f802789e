"""Reproducing the paper: `tables` (Tables 1/2, resumable cells), `sweep` (the α sweep, Figure 4),
`parallel` (worker processes), `tracking` (W&B), `plots` (table figures)."""
