"""Plot which blocks SMT chose: selected blocks per layer × matrix type (the paper's "V matters most" check).

Usage:
    python scripts/plot_smt_selection.py outputs/.../checkpoints/last.ckpt   # → results/figures/smt_selection.png
    python scripts/plot_smt_selection.py results/runs/<record>.json --out results/figures/smt_rte.png

Input: a Lightning checkpoint (``peftlab.method_state``; read with ``weights_only=True``, so a file carrying a
pickled object is refused), a run record (``method_state``) or a JSON file holding SMT's ``method_state()``
itself. Prints the table and writes a heat map (default ``results/figures/smt_selection.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peftlab.checkpoint import load_checkpoint  # noqa: E402
from peftlab.errors import PeftlabError  # noqa: E402
from peftlab.methods.smt.method import layer_index, spec_type  # noqa: E402

DEFAULT_OUT = Path("results") / "figures" / "smt_selection.png"


def load_state(path: Path) -> dict[str, Any]:
    """SMT's method_state from a checkpoint, a run record or a bare method_state JSON."""
    if path.suffix == ".ckpt":
        try:
            data = load_checkpoint(path, mmap=True).get("peftlab", {})
        except PeftlabError as err:
            raise SystemExit(f"error: {err}") from None
    else:
        data = json.loads(path.read_text())
    state = data.get("method_state", data)
    if "selection" not in state:
        raise SystemExit(f"{path}: no SMT selection found (was the run past its warm-up?)")
    return state


def grid(state: dict[str, Any]) -> tuple[list[int], list[str], list[list[int]]]:
    """Layers, matrix types and the count of selected blocks in each (layer, type) cell."""
    cells: dict[tuple[int, str], int] = {}
    for name, blocks in state["selection"].items():
        key = (layer_index(name) or 0, spec_type(name))
        cells[key] = cells.get(key, 0) + len(blocks)
    layers = sorted({k[0] for k in cells})
    types = sorted({k[1] for k in cells})
    return layers, types, [[cells.get((layer, t), 0) for t in types] for layer in layers]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"figure path (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    state = load_state(args.source)
    layers, types, counts = grid(state)
    print("layer  " + "  ".join(f"{t:>8}" for t in types))
    for layer, row in zip(layers, counts, strict=True):
        print(f"{layer:>5}  " + "  ".join(f"{c:>8}" for c in row))
    totals = [sum(row[i] for row in counts) for i in range(len(types))]
    print("total  " + "  ".join(f"{c:>8}" for c in totals))
    fig, ax = plt.subplots(figsize=(1.2 * len(types) + 2, 0.35 * len(layers) + 1.5))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(types)), [f"{t}\n({n})" for t, n in zip(types, totals, strict=True)])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("matrix type (total blocks)")
    ax.set_ylabel("layer")
    ax.set_title(f"SMT: {sum(totals)} selected blocks of {state.get('block_size')}²")
    fig.colorbar(image, ax=ax, label="selected blocks")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
