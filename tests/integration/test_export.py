"""Export → reload → evaluate equality for every method: one short tiny run each, then the adapter export
must reproduce the run's recorded test metrics exactly (CPU, same seed, same data) and be small. Also: the
export of a multi-epoch run is its final state, stale and unsafe checkpoints are refused, records hold
repository-relative paths that export resolves, and exports get the umask's permissions."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab import results
from peftlab.checkpoint import load_checkpoint
from peftlab.errors import ConfigError
from peftlab.export import ADAPTER_DIR, CHECKPOINT, evaluate, export
from peftlab.methods import METHODS
from peftlab.methods.base import ADAPTER_FILE
from peftlab.train import run

SMT = ["method.block_size=16", "method.budget_unit=blocks", "method.budget=5", "method.warmup_steps=2",
       "method.smt_lr=3e-3", "method.warmup_mode=grad_only"]
EXTRA = {"smt": SMT,
         "spt_lora": ["method.budget=5000"],  # tiny BERT holds at most 15,808 SPT parameters (default 200,000)
         "lisa": ["method.activated_layers=1"]}  # 1 of 2 blocks trains: the export must leave the other out
FAST = {"lora", "smt", "capaboost_lora"}  # the rest are marked slow (≈10 s each)
FULL_SIZE = {"full"}  # methods whose "adapter" is the whole model
MULTI_EPOCH = ["trainer.max_epochs=3", "task.num_train=64", "task.batch_size=16",  # 4 steps per epoch, 12 in all
               "callbacks.checkpoint.every_n_train_steps=5"]  # periodic saves at steps 5 and 10 only


def _params() -> list:
    return [pytest.param(m, marks=() if m in FAST else pytest.mark.slow) for m in METHODS.names()]


def _train(cfg_factory, tmp_path: Path, method: str, *overrides: str) -> Path:
    cfg = cfg_factory(f"method={method}", *EXTRA.get(method, []), "callbacks=default", "task.num_train=32",
                      "task.num_validation=16", "seed=5", *overrides)
    run(cfg)
    (record,) = (tmp_path / "runs").rglob("*.json")
    return record


def _assert_lisa_exports_what_it_trained(export_dir: Path, meta: dict) -> None:
    """LISA trains the embeddings throughout (most of tiny BERT), so its export is not small; it must hold
    exactly the blocks LISA trained and leave the others to the base model."""
    state = meta["method_state"]
    exported = load_file(str(export_dir / ADAPTER_DIR / ADAPTER_FILE))
    blocks = {int(m[1]) for key in exported if (m := re.search(r"\.layer\.(\d+)\.", key))}
    assert blocks == set(state["trained_layers"]) and len(blocks) < state["num_layers"], (blocks, state)
    assert meta["sizes"]["adapter_bytes"] < meta["sizes"]["full_model_bytes"]


@pytest.mark.parametrize("method", _params())
def test_export_reload_evaluate_reproduces_recorded_metrics(cfg_factory, tmp_path: Path, method: str) -> None:
    record_path = _train(cfg_factory, tmp_path, method)
    record = json.loads(record_path.read_text())
    meta = export(record_path, tmp_path / "export")

    recorded = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
    assert recorded and meta["recorded_metrics"] == recorded
    measured, recorded_in_export = evaluate(tmp_path / "export")
    assert measured == recorded == recorded_in_export  # exact: deterministic CPU, same weights and data

    sizes = meta["sizes"]
    if method == "lisa":
        _assert_lisa_exports_what_it_trained(tmp_path / "export", meta)
    elif method not in FULL_SIZE:
        assert sizes["adapter_bytes"] < 0.5 * sizes["full_model_bytes"], sizes
    assert not list(tmp_path.glob(".export.*")), "temporary export dir left behind"


def test_export_of_a_multi_epoch_run_is_its_final_state(cfg_factory, tmp_path: Path) -> None:
    """12 steps, periodic checkpoints at 5 and 10: the run still ends with the checkpoint of step 12, and its
    export reproduces the recorded metrics (a step-10 checkpoint was exported silently before)."""
    record_path = _train(cfg_factory, tmp_path, "lora", "method.lr=5e-3", *MULTI_EPOCH)
    record = json.loads(record_path.read_text())
    assert record["global_steps"] == 12
    assert load_checkpoint(Path(record["output_dir"]) / CHECKPOINT)["global_step"] == 12
    export(record_path, tmp_path / "export")
    measured, recorded = evaluate(tmp_path / "export")
    assert measured == recorded and recorded


def test_export_refuses_a_stale_checkpoint(cfg_factory, tmp_path: Path) -> None:
    """Lightning's plain ModelCheckpoint (what runs used before) leaves the step-10 checkpoint of a 12-step run."""
    record_path = _train(cfg_factory, tmp_path, "lora", *MULTI_EPOCH,
                         "callbacks.checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint")
    with pytest.raises(ConfigError, match=r"last.ckpt is from step 10, but run record .* ended at step 12, so "
                                          r"exporting it would not reproduce the recorded metrics; rerun"):
        export(record_path, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_refuses_a_checkpoint_holding_a_pickled_object(tmp_path: Path) -> None:
    """A shared checkpoint could run code when unpickled: it is read with weights_only=True and refused."""
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=1.0)}, tmp_path / "out" / CHECKPOINT)
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps({"status": "complete", "output_dir": str(tmp_path / "out"), "config": {}}))
    with pytest.raises(ConfigError, match=r"^checkpoint .*last.ckpt holds a pickled Python object "
                                          r"\(argparse.Namespace\): refused, as unpickling it could run"):
        export(rec, tmp_path / "e")


def test_export_from_run_dir_finds_the_record_and_refuses_to_overwrite(cfg_factory, tmp_path: Path) -> None:
    record_path = _train(cfg_factory, tmp_path, "lora")
    out_dir = Path(json.loads(record_path.read_text())["output_dir"])
    assert (out_dir / CHECKPOINT).is_file()
    # a run dir written by train.py has .hydra/config.yaml; emulate it from the record's resolved config
    (out_dir / ".hydra").mkdir()
    (out_dir / ".hydra" / "config.yaml").write_text(json.dumps(json.loads(record_path.read_text())["config"]))
    meta = export(out_dir, tmp_path / "e1")
    assert meta["source"]["record"] == str(record_path) and meta["recorded_metrics"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "e1").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    with pytest.raises(ConfigError, match="already exists"):
        export(record_path, tmp_path / "e1")


def test_records_hold_repository_relative_paths(cfg_factory, tmp_path: Path, monkeypatch) -> None:
    """With the repository root at tmp_path, the run's record and pointer hold no absolute path, and export
    resolves them against the root (whatever the working directory)."""
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    record_path = _train(cfg_factory, tmp_path, "lora")
    text = record_path.read_text()
    assert str(tmp_path) not in text
    record = json.loads(text)
    assert record["output_dir"] == "out" and record["config"]["paths"]["output_dir"] == "out"
    assert (tmp_path / "out" / "record_path").read_text() == str(record_path.relative_to(tmp_path))
    meta = export(record_path, tmp_path / "export")
    assert meta["source"] == {"record": str(record_path.relative_to(tmp_path)), "checkpoint": f"out/{CHECKPOINT}"}


def test_export_of_a_failed_run_is_refused(tmp_path: Path) -> None:
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps({"status": "failed", "output_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="status 'failed', not 'complete'"):
        export(rec, tmp_path / "e")
    assert not (tmp_path / "e").exists()
