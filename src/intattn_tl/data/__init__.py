"""Benchmark records and your own requests: `records` (EditRecord, loaders with sha256 checks, the packaged
copies in `benchmarks/`), `requests` (facts from tuples / dicts / JSON / CSV), `conflicts` (a batch that
contradicts itself)."""
