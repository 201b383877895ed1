"""The package version (read by the server's /version and by packaging)."""

__version__ = "0.1.0"
