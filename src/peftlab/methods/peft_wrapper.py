"""Shared base for the methods we take from HF ``peft`` (wrap, never re-implement).

A subclass only says which ``peft`` config its options map to; applying, head handling
(``modules_to_save``), merging and adapter state come from ``peft`` itself.
"""

from __future__ import annotations

from pathlib import Path

import peft
import torch
from torch import nn

from peftlab.methods.base import Method, head_module_names
from peftlab.models import ModelSpec


class PeftMethod(Method):
    """A method realised by ``peft.get_peft_model``."""

    def peft_config(self, spec: ModelSpec, modules_to_save: list[str] | None) -> peft.PeftConfig:
        raise NotImplementedError

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        heads = head_module_names(model, spec) if self.config.train_head else []
        return peft.get_peft_model(model, self.peft_config(spec, heads or None))

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        result = peft.set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise KeyError(f"adapter keys not in the model: {result.unexpected_keys[:5]}")
        return model

    def save_adapter(self, model: nn.Module, directory: Path) -> None:
        """peft's own adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
        model.save_pretrained(str(directory))

    def load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        from safetensors.torch import load_file

        return self.load_adapter_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
