"""CapaBoost (Song et al., ICLR 2024, arXiv 2407.01320): d fixed-mask copies of one PEFT module's weights.

``config.py`` options, ``masks.py`` seeded masks, ``layer.py`` the shared-weight masked layers,
``method.py`` the registered methods ``capaboost_lora`` and ``capaboost_adapter``.
"""

from peftlab.methods.capaboost.layer import CapaBoostLoraLinear, MaskedTiedLinear
from peftlab.methods.capaboost.method import CapaBoostAdapter, CapaBoostLora

__all__ = ["CapaBoostAdapter", "CapaBoostLora", "CapaBoostLoraLinear", "MaskedTiedLinear"]
