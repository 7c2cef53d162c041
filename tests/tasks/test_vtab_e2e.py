"""End to end through ``train.run``: LoRA (peft on timm's fused qkv) and full FT on the offline digits task with a
random-init tiny ViT, and a VTAB-layout run whose record the VTAB report reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from peftlab.methods.base import count_parameters
from peftlab.models import load_backbone
from peftlab.tasks.vision.report import collect, markdown_table
from peftlab.train import run, validate
from tests.conftest import compose_config
from tests.tasks.test_vtab import make_vtab_folder

FAST = ["model=tiny_vit", "logger=none", "callbacks=none", "trainer.enable_progress_bar=false"]
CHANCE = 10.0  # digits: 10 balanced classes


D, HIDDEN = 64, 128  # conf/model/tiny_vit.yaml: embed_dim 64, mlp_ratio 2
# LoRA pair on a Linear(d_in, d_out) holds r·(d_in + d_out) parameters
LORA_CASES = {
    "qkv": (r"attn\.qkv", D + 3 * D),  # the fused q,k,v projection, as NOAH's LoRA
    "qkv,o,up,down": (r"attn\.(qkv|proj)|mlp\.fc[12]", (D + 3 * D) + (D + D) + (D + HIDDEN) + (HIDDEN + D)),
}


@pytest.mark.parametrize("targets", list(LORA_CASES))
def test_lora_on_timm_vit_modules(targets: str) -> None:
    """peft attaches one LoRA pair per targeted Linear; count = blocks·r·Σ(d_in + d_out) + head; merge is exact."""
    cfg = compose_config([*FAST, "task=digits", "method=lora", f"method.targets=[{targets}]", "method.r=4"])
    spec, method, task = validate(cfg)
    torch.manual_seed(0)
    model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    pattern, per_block = LORA_CASES[targets]
    lora = sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})
    assert lora and all(re.fullmatch(rf".*blocks\.\d+\.(?:{pattern})", n) for n in lora)
    blocks, classes = 2, 10
    assert len(lora) == blocks * len(targets.split(","))
    assert count_parameters(model)[0] == blocks * 4 * per_block + (D * classes + classes)

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero: make the update non-trivial before comparing
        model.eval()
        expected = model(x)
        merged = method.merge(model)
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("method", "overrides"), [
    ("full", ["method.lr=1e-3"]),
    ("lora", ["method.targets=[qkv]", "method.lr=5e-3"]),
])
def test_digits_end_to_end_above_chance(tmp_path: Path, method: str, overrides: list[str]) -> None:
    cfg = compose_config([*FAST, "task=digits", f"method={method}", *overrides, "task.epochs=3"], tmp_path)
    metrics = run(cfg)
    # 3 epochs from random init on 1,000 real digits; measured ~44% (full) / ~56% (LoRA), chance 10%
    assert metrics["test/top1"] > 2.5 * CHANCE, metrics
    records = list((tmp_path / "runs").rglob("*.json"))
    assert len(records) == 1


def test_vtab_layout_end_to_end_and_report(tmp_path: Path) -> None:
    make_vtab_folder(tmp_path / "vtab-1k")
    cfg = compose_config([*FAST, "task=vtab/kitti", f"task.data_root={tmp_path / 'vtab-1k'}", "method=lora",
                          "method.targets=[qkv]", "task.epochs=1", "task.batch_size=4"], tmp_path)
    metrics = run(cfg)
    assert 0.0 <= metrics["test/top1"] <= 100.0
    found = collect(tmp_path / "runs")
    assert found == {"lora tiny_vit": {"kitti": {0: metrics["test/top1"]}}}
    table = markdown_table(found)
    assert "KITTI-Dist" in table and "mean of 19 tasks" in table
    assert table.splitlines()[-1].count("–") == 18 + 3 + 2  # 18 tasks, 3 groups, 2 overall means missing
