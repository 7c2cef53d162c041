"""SPT: sensitivity-aware hybrid sparse + LoRA tuning (arXiv 2303.08566). See :mod:`.method`."""

from peftlab.methods.spt.method import SptLora

__all__ = ["SptLora"]
