"""Tests of minikv_core.cluster."""
