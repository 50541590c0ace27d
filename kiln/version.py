"""Kiln's release, recorded in every engine file (header field ``versions.kiln``); ``kiln.__version__``."""
__version__ = "0.1.0"
