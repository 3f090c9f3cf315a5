"""Sub-command groups of the `minikv` CLI, one module each."""
