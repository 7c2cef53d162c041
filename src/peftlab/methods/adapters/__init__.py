"""Bottleneck adapters: the layer (``layer.py``) and the Houlsby / Pfeiffer methods (``method.py``)."""

from peftlab.methods.adapters.layer import (
    AdaptedModule,
    BottleneckAdapter,
    adapter_modules,
    insert_adapters,
    remove_adapters,
)

__all__ = ["AdaptedModule", "BottleneckAdapter", "adapter_modules", "insert_adapters", "remove_adapters"]
