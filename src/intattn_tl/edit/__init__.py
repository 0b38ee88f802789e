"""The editing engine, one step per module: `transaction` (exact, all-or-nothing updates), `keys`,
`prefixes`, `covariance` (key statistics), `targets` (target values), `solve` (closed forms), `chain`
(the MEMIT chain shared by the MEMIT-style methods), `sanity` (post-edit check), `result` (what an edit
did, saved and applied again), `export` (the edited model as a Hugging Face checkpoint)."""
