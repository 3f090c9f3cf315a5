"""Durable storage: the segmented write-ahead log and the per-shard LSM engine."""
