"""minikv_tui: everything a person touches (CLI, dashboard, REPL).

It reaches nodes only through `minikv_core.client` and the admin API, never their internals.
"""
