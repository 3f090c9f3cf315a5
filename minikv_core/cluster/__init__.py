"""Shard map, multi-raft host, transactions, repair and membership."""
