"""A pure Raft state machine: no I/O, no clock, no randomness of its own."""
