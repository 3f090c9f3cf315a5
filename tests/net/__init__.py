"""Tests of minikv_core.net: the Raft codec, the fault filter and the peer transport."""
