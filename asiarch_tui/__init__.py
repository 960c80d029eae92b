"""asiarch-tui: the Textual research console, its CLI and the worker that runs the loop."""

__version__ = "0.1.0"
