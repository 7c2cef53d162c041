"""scripts/bench_demo.py's table: a failed run's row names its error, and every row is compared with LoRA's."""

from __future__ import annotations

from tests.unit.test_tables import load_script

bench_demo = load_script("bench_demo")

HYDRA_CRASH = """Error executing job with overrides: ['method=adalora']
Traceback (most recent call last):
  File "train.py", line 33, in main
KeyError: 'bert.encoder.layer.0.attention.self.query.lora_A.default'

Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.
"""


def test_a_crashed_run_is_named_by_its_exception_not_hydras_hint() -> None:
    assert bench_demo.error_line(HYDRA_CRASH) == "KeyError: 'bert.encoder.layer.0.attention.self.query.lora_A.default'"
    assert bench_demo.error_line("error: method.r=0 must be > 0\n") == "error: method.r=0 must be > 0"
    assert bench_demo.error_line("") == "no output"


def test_table_rows_are_compared_with_lora() -> None:
    rows = [{"method": "lora", "test": 70.0, "trainable": 100, "total": 1000, "cpu_s": 1.0, "wall_s": 2.0},
            {"method": "ia3", "test": 62.5, "trainable": 10, "total": 1000, "cpu_s": 1.0, "wall_s": 2.0},
            {"method": "smt", "error": "KeyError: 'x'", "cpu_s": 0.5, "wall_s": 1.0}]
    lines = bench_demo.table(rows).splitlines()
    assert lines[2].startswith("| lora | 70.00 | +0.00 | 100 | 10.000 |")
    assert lines[3].startswith("| ia3 | 62.50 | -7.50 | 10 | 1.000 |")
    assert lines[4].startswith("| smt | failed: KeyError: 'x' |")


def test_header_names_the_overrides_every_row_ran_with() -> None:
    record = {"command": "python scripts/bench_demo.py --methods adalora -- method.lr=5e-3", "created": "t",
              "hardware": {"processor": "x86_64", "cpu_count": 2}, "git": {"commit": "abc", "dirty": False}}
    some = bench_demo.header(record, ["adalora"], ["method.lr=5e-3"], 1)
    assert some.startswith("# Methods on the demo, with method.lr=5e-3 (cpu)")
    assert "`python train.py method=<method> method.lr=5e-3`" in some and "commit abc)" in some
    every = bench_demo.header({**record, "git": {"commit": "abc", "dirty": True}}, bench_demo.METHODS.names(), [], 2)
    assert every.startswith("# Every method on the demo, with its defaults (cpu)") and "commit abc+dirty)" in every
