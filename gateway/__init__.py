"""swgw: single-window message gateway."""

__version__ = "0.1.0"
