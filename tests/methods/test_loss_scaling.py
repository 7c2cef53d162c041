"""fp16 loss scaling (``16-mixed``) and the methods that read gradients, on the CPU: Lightning's MixedPrecision
plugin with torch's GradScaler (fp16 autocast), a tiny BERT, overflow forced at chosen steps (that batch's loss ×
1e30: its fp16 gradients overflow, the scaler skips the step and halves the scale).

For SMT (both warm-up modes), SPT and SpIEL, what the method decides from (SMT's warm-up sums, SPT's sensitivity,
SpIEL's candidate sums and the Adam moments it seeds) is finite, of the unscaled loss (close to a run without
autocast) and the same as in a run fed the same batches without the overflowing ones, and so is the decision;
the lr scheduler advances once per update made; a phase where no trained tensor gets a gradient (SPT's
sensitivity pass, SMT ``grad_only`` with the head frozen) runs (GradScaler alone raises "No inf checks were
recorded for this optimizer").
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import MixedPrecision
from torch.utils.data import DataLoader

from peftlab.module import PeftModule
from peftlab.train import build
from tests.conftest import TINY, compose_config

DATA = [*TINY, "task.num_train=64", "task.batch_size=8", "optim.warmup_steps=0",  # 8 batches, dropout off
        "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
SCALE = 2.0**10
SMT = ["method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=4", "method.lr=1e-3",
       "method.smt_lr=1e-2"]


@functools.cache
def batches() -> list[dict[str, Any]]:
    """The 8 training batches of the run's data order (every test feeds its own selection of them)."""
    _, data, _ = build(compose_config(DATA))
    return list(data.train_dataloader())


def fit(overrides: list[str], feed: list[dict[str, Any]], overflow: tuple[int, ...] = (), fp16: bool = True,
        snapshot: str = "switch", take: Callable[[Any], Any] = lambda m: None,
        after: Callable[[Any], Any] = lambda m: None) -> tuple[PeftModule, pl.Trainer, list[tuple[Any, Any]]]:
    """Train one epoch over ``feed``; the batches at positions ``overflow`` overflow. ``(take(method),
    after(method))`` is recorded before and after each call of the method's ``snapshot`` (its decision)."""
    module, _, _ = build(compose_config([*DATA, *overrides]))
    calls, loss = itertools.count(), module.task.loss
    module.task.loss = lambda model, batch: loss(model, batch) * (1e30 if next(calls) in overflow else 1.0)
    seen: list[Any] = []
    decide = getattr(module.method, snapshot)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        before = take(module.method)
        result = decide(*args, **kwargs)
        seen.append((before, after(module.method)))
        return result

    setattr(module.method, snapshot, recorded)
    plugins = [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=SCALE))] if fp16 else []
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", plugins=plugins, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(feed, batch_size=None))  # the batches as they are
    assert len(seen) >= 1, f"{snapshot} never ran"
    return module, trainer, seen


def clone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in tensors.items()}


def assert_same_reads(scaled: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                      fp32: dict[str, torch.Tensor] | None = None, same_positions: bool = True) -> None:
    """Finite; as the run without the overflowing batches (to fp16 rounding: the scale differs after a skip, 2^9
    against 2^10, so a read left scaled differs too); with ``fp32``, of the unscaled loss: within fp16 autocast's
    error of the run without autocast (a scaled read is off by 2^10, a squared one by 2^20). Tolerances relative to
    the largest read (some gradients are zero in exact arithmetic, e.g. key biases). ``same_positions=False``: the
    fp32 run may read other positions (SpIEL's top-|g| candidates differ in near-ties): magnitudes are compared."""
    assert scaled.keys() == reference.keys() and scaled
    largest = max(v.abs().max().item() for v in reference.values())
    for name, value in scaled.items():
        assert torch.isfinite(value).all(), f"{name}: non-finite"
        torch.testing.assert_close(value, reference[name], rtol=1e-3, atol=1e-4 * largest, msg=name)
    if fp32 is None:
        return
    assert fp32.keys() == scaled.keys()
    if same_positions:
        flat = [torch.cat([r[n].flatten().double() for n in sorted(r)]) for r in (scaled, fp32)]
        relative = ((flat[0] - flat[1]).norm() / flat[1].norm()).item()
        assert relative < 0.05, f"{relative:.3g} from the fp32 run's"
        return
    for name in scaled:
        ratio = (scaled[name].double().abs().sum() / fp32[name].double().abs().sum()).item()
        assert 0.9 < ratio < 1.1, f"{name}: {ratio:.3g} × the fp32 run's magnitude"


def test_smt_grad_only_reads_unscaled_sums_of_the_steps_taken() -> None:
    """Head frozen: nothing the optimizer holds gets a gradient during the warm-up (all probed)."""
    feed = batches()
    smt = [*SMT, "method.warmup_mode=grad_only", "method.train_head=false"]
    take = lambda m: clone(m.grad_sums)  # noqa: E731
    a, trainer, ((sums, _), *_) = fit([*smt, "method.warmup_steps=3"], feed, overflow=(1,), take=take)
    without = [feed[0], *feed[2:], feed[1]]  # the overflowing batch left out (moved past the warm-up)
    b, _, ((reference, _), *_) = fit([*smt, "method.warmup_steps=2"], without, take=take)
    _, _, ((fp32, _), *_) = fit([*smt, "method.warmup_steps=2"], without, fp16=False, take=take)
    assert_same_reads(sums, reference, fp32)
    assert a.method.selection == b.method.selection
    assert trainer.precision_plugin.scaler.get_scale() == SCALE / 2  # one step skipped


def test_smt_full_reads_unscaled_sums_and_the_schedule_follows_the_updates() -> None:
    """Overflow at step 2 (warm-up) and step 6 (blocks): both skipped; the scheduler and AdamW count 6 updates."""
    feed = batches()
    take = lambda m: clone(m.grad_sums)  # noqa: E731
    a, trainer, ((sums, _), *_) = fit([*SMT, "method.warmup_steps=3"], feed, overflow=(1, 5), take=take)
    without = [feed[0], *feed[2:], feed[1]]  # same length: the same lr schedule
    b, _, ((reference, _), *_) = fit([*SMT, "method.warmup_steps=2"], without, take=take)
    assert_same_reads(sums, reference)  # .grad at the step: unscaled by Lightning
    assert a.method.selection == b.method.selection
    assert trainer.global_step == 8 and trainer.precision_plugin.scaler.get_scale() == SCALE / 4
    scheduler, optimizer = trainer.lr_scheduler_configs[0].scheduler, trainer.optimizers[0]
    block = next(p for n, p in a.model.named_parameters() if n.endswith("smt_delta"))
    assert scheduler.last_epoch == int(optimizer.state[block]["step"]) == 4  # steps 4-8 after the switch, 6 skipped


def test_spt_sensitivity_is_unscaled_and_skips_overflow() -> None:
    """The sensitivity pass trains nothing (head frozen in it): the scaler's step must still run."""
    feed = batches()
    spt = ["method=spt_lora", "method.budget=5000"]
    take = lambda m: clone(m.sums)  # noqa: E731
    a, _, ((sums, _), *_) = fit([*spt, "method.sensitivity_batches=3"], feed, overflow=(1,), take=take)
    without = [feed[0], *feed[2:], feed[1]]
    b, _, ((reference, _), *_) = fit([*spt, "method.sensitivity_batches=2"], without, take=take)
    assert_same_reads(sums, reference)
    assert a.method.plan == b.method.plan


def test_spiel_candidates_and_seeded_moments_are_unscaled() -> None:
    """Window of 3 steps (the 2nd overflows) against a window of 2 over the same batches taken: the same candidates,
    sums, indices after drop/grow, and Adam moments seeded for the grown slots (mean gradient, mean square)."""
    feed = batches()
    spiel = ["method=spiel", "method.reselection_steps=5", "method.lr=1e-2"]

    def take(method: Any) -> dict[str, torch.Tensor]:
        out = {}
        for name, (positions, sums, squares, samples) in method.candidates.items():
            out |= {f"positions:{name}": positions, f"mean:{name}": sums / samples,
                    f"mean_sq:{name}": squares / samples}
        return out

    def chosen(method: Any) -> dict[str, torch.Tensor]:  # by position: which slot holds an entry is bookkeeping
        out = {f"indices:{n}": m.spiel_indices.sort().values for n, m in method.layers.items()}
        for name, layer in method.layers.items():
            if id(layer.spiel_values) not in method.pending:
                continue
            slots, mean, mean_sq = method.pending[id(layer.spiel_values)]
            grown = layer.spiel_indices[slots]
            order = grown.argsort()
            out |= {f"grown:{name}": grown[order], f"seed_m:{name}": mean[order], f"seed_v:{name}": mean_sq[order]}
        return out

    without = [feed[0], *feed[2:], feed[1]]
    runs = [fit([*spiel, "method.selection_accumulation_steps=3"], feed, overflow=(1,), snapshot="reselect",
                take=take, after=chosen)]
    runs += [fit([*spiel, "method.selection_accumulation_steps=2"], without, fp16=fp16, snapshot="reselect",
                 take=take, after=chosen) for fp16 in (True, False)]
    states = [{**before, **after} for _, _, ((before, after), *_) in runs]
    exact = [k for k in states[0] if k.startswith(("positions:", "indices:", "grown:"))]
    for k in exact:
        assert torch.equal(states[0][k], states[1][k]), k
    assert_same_reads(*({k: v for k, v in state.items() if k not in exact} for state in states), same_positions=False)


def test_adalora_importance_leaves_out_overflowing_steps() -> None:
    """peft's rank allocator reads ``.grad`` after each step (its sensitivity averages, Eq. 8-11): a skipped step's
    inf gradients must not reach them (they are cleared at the final masking, step 6: look after every step)."""
    adalora = ["method=adalora", "method.init_r=4", "method.target_r=2", "method.tinit=1", "method.tfinal=2"]

    def finite(method: Any) -> dict[str, bool]:
        return {key: all(torch.isfinite(t).all() for t in tensors.values())
                for key, tensors in method.resume_state().items()}

    module, trainer, seen = fit(adalora, batches(), overflow=(2,), snapshot="on_train_batch_end", after=finite)
    assert trainer.precision_plugin.scaler.get_scale() == SCALE / 2  # step 3 was skipped
    assert len(seen) == 8 and all(all(state.values()) for _, state in seen), seen
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_lisa_rebuild_continues_the_schedule_from_the_updates_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """LISA rebuilds its optimizer at every draw (every 3 steps) and keeps one schedule: after a skipped step the
    rebuilt scheduler continues from the updates made, so the k-th update runs at the lr of the k-th update of a run
    whose batches all trained (counting optimizer steps instead, the schedule would run one step ahead after the
    rebuild at step 3)."""
    lisa = ["method=lisa", "method.interval_steps=3", "method.activated_layers=1", "method.lr=1e-3"]
    original = PeftModule.on_before_optimizer_step

    def lrs_of_updates(feed: list[dict[str, Any]], overflow: tuple[int, ...]) -> list[float]:
        lrs: list[float] = []

        def record(self: PeftModule, optimizer: torch.optim.Optimizer) -> None:
            original(self, optimizer)
            if not self._step_skipped:
                lrs.append(optimizer.param_groups[0]["lr"])

        monkeypatch.setattr(PeftModule, "on_before_optimizer_step", record)
        fit(lisa, feed, overflow=overflow, snapshot="on_train_batch_end")
        return lrs

    feed = batches()
    skipped = lrs_of_updates(feed, overflow=(1,))
    reference = lrs_of_updates([feed[0], *feed[2:], feed[1]], overflow=())
    assert len(skipped) == 7 and skipped == reference[:7], (skipped, reference)
