"""The property matrix every method passes (after HF peft's tuner tests), on a tiny random model.

Subclass :class:`MethodProperties` in ``tests/methods/test_<method>.py``::

    class TestLoraProperties(MethodProperties):
        method = "lora"
        overrides = ["method.r=4"]
        trainable_regex = r".*(lora_[AB]|classifier).*"

        def expected_trainable(self, model, spec):
            return <closed-form count>

Properties: only the intended parameters train and their count equals the method's formula; frozen
parameters get no ``.grad`` and stay bit-identical through optimizer steps; a few steps lower the
loss; save → load onto a fresh base model gives identical outputs; merge (where defined) gives the
same outputs with the base model's parameter count.
"""

from __future__ import annotations

import copy
import re
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.methods.base import Method, count_parameters
from peftlab.models import ModelSpec, load_backbone, load_tokenizer
from peftlab.train import validate
from tests.conftest import compose_config

SEED = 0


class MethodProperties:
    method: ClassVar[str]
    overrides: ClassVar[list[str]] = []
    model: ClassVar[str] = "tiny_bert"
    trainable_regex: ClassVar[str] = ".*"  # every trainable parameter name must fullmatch this
    has_merge: ClassVar[bool] = True
    steps: ClassVar[int] = 5
    lr: ClassVar[float | None] = None  # default: the method's own lr
    # fp32 forward of a 2-layer model: equal up to summation-order rounding
    atol: ClassVar[float] = 1e-5

    # ---- hooks for subclasses ----
    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        raise NotImplementedError("write the method's closed-form parameter count")

    def prepare(self, method: Method, model: nn.Module, batch: dict[str, Any]) -> nn.Module:
        """Anything the method needs between apply and training (e.g. SMT's warm-up)."""
        return model

    # ---- fixtures ----
    def build(self) -> tuple[nn.Module, Method, ModelSpec, dict[str, Any]]:
        cfg = compose_config([f"model={self.model}", f"method={self.method}", *self.overrides])
        spec, method, task = validate(cfg)
        torch.manual_seed(SEED)
        model = load_backbone(spec, task.head, task.num_labels)
        model = method.apply(model, spec)
        batch = self.batch(spec)
        model = self.prepare(method, model, batch)
        return model, method, spec, batch

    def fresh(self) -> tuple[nn.Module, Method, ModelSpec]:
        """Same config and seed as :meth:`build`, without training: the 'base model' to load onto."""
        cfg = compose_config([f"model={self.model}", f"method={self.method}", *self.overrides])
        spec, method, task = validate(cfg)
        torch.manual_seed(SEED)
        model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
        return model, method, spec

    @staticmethod
    def batch(spec: ModelSpec) -> dict[str, Any]:
        tok = load_tokenizer(spec)
        first = ["Anna put the keys in the kitchen.", "The cat sleeps.", "Ben reads a book.", "It rains a lot today."]
        second = ["The keys are in the kitchen.", "A dog barks.", "Ben is reading.", "The sun is out."]
        batch = dict(tok(first, second, padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor([1, 0, 1, 0])
        return batch

    def train_steps(self, model: nn.Module, method: Method, batch: dict[str, Any], steps: int) -> list[float]:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr or method.current_lr(), weight_decay=0.0)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    @staticmethod
    def outputs(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    # ---- properties ----
    def test_trainable_set_and_count(self) -> None:
        model, _, spec, _ = self.build()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names, "method left nothing trainable"
        stray = [n for n in names if not re.fullmatch(self.trainable_regex, n)]
        assert not stray, f"unexpected trainable parameters: {stray[:5]}"
        assert count_parameters(model)[0] == self.expected_trainable(model, spec)

    def test_frozen_params_get_no_grad_and_stay_identical(self) -> None:
        model, method, _, batch = self.build()
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        self.train_steps(model, method, batch, 2)
        for n, p in model.named_parameters():
            if n in frozen:
                assert p.grad is None, f"frozen {n} got a gradient"
                assert torch.equal(p, frozen[n]), f"frozen {n} changed"

    def test_steps_lower_loss(self) -> None:
        model, method, _, batch = self.build()
        losses = self.train_steps(model, method, batch, self.steps)
        with torch.no_grad():
            model.train(False)
            final = model(**batch).loss.item()
        assert final < losses[0], f"loss did not decrease: {losses[0]:.4f} -> {final:.4f}"

    def test_save_load_identical_outputs(self) -> None:
        model, method, _, batch = self.build()
        self.train_steps(model, method, batch, 3)
        expected = self.outputs(model, batch)
        state, mstate = method.adapter_state_dict(model), copy.deepcopy(method.method_state())
        fresh, fresh_method, _ = self.fresh()
        assert not torch.allclose(self.outputs(fresh, batch), expected), "training changed nothing: test is vacuous"
        fresh = fresh_method.load_method_state(fresh, mstate)
        fresh = fresh_method.load_adapter_state_dict(fresh, state)
        torch.testing.assert_close(self.outputs(fresh, batch), expected, atol=self.atol, rtol=0)

    def test_merge_identical_outputs(self) -> None:
        if not self.has_merge:
            return
        model, method, _, batch = self.build()
        self.train_steps(model, method, batch, 3)
        expected = self.outputs(model, batch)
        base_total = count_parameters(load_backbone(*self._spec_head()))[1]
        merged = method.merge(model)
        torch.testing.assert_close(self.outputs(merged, batch), expected, atol=self.atol, rtol=0)
        assert count_parameters(merged)[1] == base_total, "merged model is larger than the base model"

    def _spec_head(self) -> tuple[ModelSpec, str, int | None]:
        cfg = compose_config([f"model={self.model}", f"method={self.method}", *self.overrides])
        spec, _, task = validate(cfg)
        return spec, task.head, task.num_labels
