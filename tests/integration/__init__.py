"""Multi-process tests: real `minikv serve` processes, real sockets, real fsync."""
