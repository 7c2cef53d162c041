"""SpIEL: sparse fine-tuning with periodic drop/grow of its indices (arXiv 2401.16405). See :mod:`.method`."""

from peftlab.methods.spiel.method import Spiel

__all__ = ["Spiel"]
