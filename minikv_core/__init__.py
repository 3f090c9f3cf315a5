"""minikv_core: everything that runs inside a minikv node process.

It never imports a terminal library (textual, prompt_toolkit, rich, typer): the node must run
headless, and a test (tests/test_layering.py) holds that line.
"""

__version__ = "0.1.0"
