"""Export only what a method trained (+ the resolved config) from a finished run.

    python scripts/export.py results/runs/synthetic_pairs/lora/minilm/seed0_<stamp>.json exports/lora_demo
    python scripts/export.py outputs/synthetic_pairs/lora/minilm/seed0_<time>   exports/lora_demo  # run dir
    python scripts/export.py outputs/.../checkpoints/last.ckpt                   exports/lora_demo

Then ``python scripts/evaluate.py exports/lora_demo`` reproduces the recorded test metrics. See docs/export.md.
"""

from __future__ import annotations

import argparse
import sys

from peftlab.errors import PeftlabError
from peftlab.export import export, human
from peftlab.logs import quiet_known_warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run record (.json), run output dir, or its checkpoint (.ckpt)")
    parser.add_argument("dest", help="new directory to write the export to")
    args = parser.parse_args(argv)
    quiet_known_warnings()
    try:
        meta = export(args.source, args.dest)
    except PeftlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = meta["sizes"]
    for name, n in sizes["adapter_files"].items():
        print(f"  adapter/{name:<40} {human(n):>12}")
    ratio = 100.0 * sizes["adapter_bytes"] / sizes["full_model_bytes"]
    print(f"[peftlab] {meta['method']} adapter: {human(sizes['adapter_bytes'])} = {ratio:.3f}% of the whole model "
          f"({human(sizes['full_model_bytes'])} of tensors; checkpoint {human(sizes['checkpoint_bytes'])})")
    print(f"[peftlab] export written to {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
