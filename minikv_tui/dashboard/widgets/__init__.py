"""The dashboard's widgets, one per file. None of them does I/O: the app hands them frames."""
