"""The dashboard's dialogs: each returns its answer with `dismiss`, the app acts on it."""
