"""``ltray prepare``: sources -> image references -> Parquet shards, and manifest.json last."""

from ltray.data.prepare.orchestrator import PrepareOptions, PrepareResult, prepare, prepare_from

__all__ = ["PrepareOptions", "PrepareResult", "prepare", "prepare_from"]
