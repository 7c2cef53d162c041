"""Re-evaluate an adapter export on its task's test split and compare with the recorded metrics.

    python scripts/evaluate.py exports/lora_demo          # exit 0 when every recorded test metric is reproduced
    python scripts/evaluate.py exports/lora_demo --no-compare

Rebuilds the base model from the export's config (same seed), applies the method, loads the adapter.
Exit status: 0 reproduced (or --no-compare), 1 a metric differs, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from peftlab.errors import PeftlabError
from peftlab.export import evaluate
from peftlab.logs import quiet_known_warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="directory written by scripts/export.py")
    parser.add_argument("--no-compare", action="store_true", help="only print the metrics")
    args = parser.parse_args(argv)
    quiet_known_warnings()
    try:
        measured, recorded = evaluate(args.export_dir)
    except PeftlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    differ = []
    for name, value in sorted(measured.items()):
        ref = recorded.get(name)
        same = ref is not None and ref == value  # exact: same weights, same data, deterministic CPU kernels
        print(f"  {name:<30} {value:.6f}" + ("" if ref is None else f"   recorded {ref:.6f} {'==' if same else '!='}"))
        if ref is not None and not same:
            differ.append(name)
    if args.no_compare:
        return 0
    if not recorded:
        print("[peftlab] the export holds no recorded metrics to compare with (exported without a run record)")
        return 0
    print(f"[peftlab] {'reproduced' if not differ else 'DIFFERENT: ' + ', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
