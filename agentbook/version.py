"""agentbook's version (ground layer: the root package and the faces read it here)."""

__version__ = "0.1.0"
