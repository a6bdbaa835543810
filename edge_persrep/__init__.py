"""edge-persrep: personalized representations (Sundaram et al., ICLR 2025) for on-device recognition."""

__version__ = "0.1.0"
