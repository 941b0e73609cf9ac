"""The package version (single source; read by pyproject and recorded in every run folder)."""

__version__ = "0.1.0"
