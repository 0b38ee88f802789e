"""Diagnostics a user runs before trusting a model's numbers: `check` (the rows of `intattn check`)."""
