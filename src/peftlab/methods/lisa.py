"""LISA — Layerwise Importance Sampled AdamW (Pan et al., NeurIPS 2024, arXiv 2403.17919).

Full-parameter AdamW where, at any time, only γ of the N_L transformer blocks train (paper Alg. 1:
sampling probabilities p = {1 (embeddings), γ/N_L, …, γ/N_L, 1 (head)}). Every K optimizer steps all blocks
freeze and γ blocks are drawn uniformly without replacement; everything outside the blocks (embeddings,
final norm, LM/task head) trains throughout. Official code: LMFlow ``DynamicLayerActivationCallback``
(``lisa_activated_layers`` = γ, default 2; ``lisa_interval_steps`` = K, default 20; the draw happens when
``global_step % K == 0``, so steps [0, K) use the first draw).

Here the switch is :meth:`Lisa.on_train_batch_end` at every multiple of K, returning True so the module
rebuilds the optimizer over the new trainable set: the Adam moments of deactivated blocks are freed, the
memory saving the paper claims. Departures:
- LMFlow only flips ``requires_grad``; its optimizer, built once, keeps the Adam state of every block ever
  activated (and carries it over when a block comes back). We free it, so a re-activated block starts with
  fresh moments;
- the draw for period p comes from a generator seeded by (``sample_seed``, p) instead of numpy's global
  stream, so a resumed run continues the same sequence and the run seed fixes it;
- blocks are the model's largest list of same-type modules (an ``nn.ModuleList``, or an ``nn.Sequential`` such as
  timm's ViT ``blocks``; ``layers`` names another), so any architecture works.

Several processes (DDP): every process draws the same blocks (checked at each draw), and the module re-wraps DDP
around the new trainable set, so the newly drawn blocks are averaged like the rest (docs/multi_gpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab import distributed
from peftlab.config_utils import PositiveFloat, PositiveInt, require
from peftlab.methods import METHODS
from peftlab.methods.base import Method, MethodConfig, count_parameters, head_module_names
from peftlab.models import ModelSpec


@dataclass
class LisaConfig(MethodConfig):
    lr: PositiveFloat = 2e-5  # LMFlow run_finetune_with_lisa.sh (paper: ~1e-5 to 2e-5)
    activated_layers: PositiveInt = 2  # γ: blocks trained at a time (LMFlow default 2; paper ablates 2/4/8)
    interval_steps: PositiveInt = 20  # K: optimizer steps between draws (LMFlow default 20)
    sample_seed: int = 0  # seeds the draws; conf/method/lisa.yaml sets it to the run seed
    layers: str | None = None  # module path of the block list; None: the model's largest list of same-type blocks


def transformer_blocks(model: nn.Module, path: str | None) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """``(path, blocks)``: the block list at ``path``, or the ``nn.ModuleList``/``nn.Sequential`` of same-type
    modules holding the most parameters."""
    if path is not None:
        modules = dict(model.named_modules())
        require(path in modules, f"method.layers='{path}' is not a module of the model")
        blocks = modules[path]
        require(isinstance(blocks, (nn.ModuleList, nn.Sequential)), f"method.layers='{path}' is a "
                f"{type(blocks).__name__}, not an nn.ModuleList or nn.Sequential of blocks")
        return path, blocks
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))
             and len(m) > 0 and len({type(b) for b in m}) == 1]
    require(bool(lists), "found no nn.ModuleList (or nn.Sequential) of transformer blocks; name it with method.layers")
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


@METHODS.register("lisa")
class Lisa(Method):
    config_cls = LisaConfig
    restarts_schedule = False  # one lr schedule for the whole run, as LMFlow's single HF-Trainer schedule
    changes_trainable_set = True
    config: LisaConfig

    def __init__(self, config: LisaConfig) -> None:
        super().__init__(config)
        self.path = ""
        self.num_layers = 0
        self.period = 0
        self.active: list[int] = []

    def draw(self, period: int) -> list[int]:
        """The γ blocks of ``period``: uniform without replacement, a function of (seed, period) only."""
        generator = torch.Generator().manual_seed((self.config.sample_seed * 1_000_003 + period) % 2**63)
        order = torch.randperm(self.num_layers, generator=generator, device="cpu")  # cpu: also under meta
        return sorted(order[: self.config.activated_layers].tolist())

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        self.path, blocks = transformer_blocks(model, self.config.layers)
        self.num_layers = len(blocks)
        require(self.config.activated_layers <= self.num_layers, f"method.activated_layers="
                f"{self.config.activated_layers} exceeds the {self.num_layers} blocks of '{self.path}'")
        for p in model.parameters():
            p.requires_grad_(True)  # full-parameter method: embeddings, norms and head always train
        if not self.config.train_head:
            for name in head_module_names(model, spec):
                model.get_submodule(name).requires_grad_(False)
        self._activate(model, 0, self.draw(0))
        return model

    def _activate(self, model: nn.Module, period: int, active: list[int]) -> None:
        self.period, self.active = period, list(active)
        for i, block in enumerate(model.get_submodule(self.path)):
            for p in block.parameters():
                p.requires_grad_(i in self.active)
                if i not in self.active:
                    p.grad = None

    def on_train_batch_end(self, model: nn.Module, step: int) -> bool:
        if step % self.config.interval_steps:
            return False
        period = step // self.config.interval_steps
        self._activate(model, period, self.draw(period))
        distributed.assert_same("LISA's layer draw", self.active)  # a function of (seed, period): same everywhere
        return True  # new trainable set: the optimizer (and its Adam state) is rebuilt over it; DDP re-wrapped

    def merge(self, model: nn.Module) -> nn.Module:
        return model  # the model's own weights were trained: nothing to fold

    def trained_layers(self) -> list[int]:
        """The blocks drawn in any period so far (draws are a function of (seed, period): nothing to store).
        Includes the current period's draw, which may not have trained yet when the run ends on a multiple of K."""
        return sorted({i for period in range(self.period + 1) for i in self.draw(period)})

    def changed_names(self, model: nn.Module) -> set[str]:
        """What LISA changed: every trainable weight outside the blocks (embeddings, norms, head) and every weight
        of the blocks it ever trained; the other blocks are the base model's."""
        prefix = f"{self.path}."
        trained = tuple(f"{prefix}{i}." for i in self.trained_layers())
        return {n for n, p in model.named_parameters()
                if n.startswith(trained) or (p.requires_grad and not n.startswith(prefix))}

    def checkpoint_names(self, model: nn.Module) -> set[str]:
        """Blocks trained in earlier periods are frozen now but changed: checkpoints keep them."""
        return self.changed_names(model)

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full-parameter method: the export holds what it changed (:meth:`changed_names`), which always
        includes the embeddings (LISA trains them throughout), so it is much larger than a low-rank adapter."""
        names = self.changed_names(model)
        return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}

    def method_state(self) -> dict[str, Any]:
        return {"layers": self.path, "num_layers": self.num_layers, "period": self.period,
                "active_layers": list(self.active), "trained_layers": self.trained_layers()}

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        if "active_layers" in state:
            require(state.get("num_layers") == self.num_layers, f"checkpoint has {state.get('num_layers')} LISA "
                    f"blocks, this model {self.num_layers}")
            self._activate(model, int(state["period"]), [int(i) for i in state["active_layers"]])
        return model

    def extra_counts(self, model: nn.Module) -> dict[str, Any]:
        """Instantaneous trainable count (now) and its expectation over draws: outside-block params +
        γ/N_L × block params (equal-sized blocks make the two equal)."""
        blocks = model.get_submodule(self.path)
        block_params = sum(p.numel() for p in blocks.parameters())
        outside = sum(p.numel() for n, p in model.named_parameters()
                      if p.requires_grad and not n.startswith(f"{self.path}."))
        expected = outside + self.config.activated_layers / self.num_layers * block_params
        return {"instantaneous": count_parameters(model)[0], "expected": round(expected),
                "active_layers": list(self.active), "num_layers": self.num_layers}
