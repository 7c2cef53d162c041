"""peftlab.logs: the known harmless third-party messages are filtered precisely (message and source), nothing
else is; each filter says why it is harmless. (train.log holding the run's log: tests/integration/test_run_dirs.py.)"""

from __future__ import annotations

import logging
import re
import warnings

from peftlab.logs import HARMLESS_LOGS, HARMLESS_WARNINGS, quiet_known_warnings

EXAMPLES = {  # a message each filter must catch, as the library words it
    HARMLESS_WARNINGS[0]: "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
    HARMLESS_WARNINGS[1]: "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
    HARMLESS_WARNINGS[2]: "Adapter 'default': 6 LoRA tensor(s) have invalid shape: base_model.x.lora_A:(0, 64)",
    HARMLESS_WARNINGS[3]: "Sparse invariant checks are implicitly disabled. Memory errors (e.g. SEGFAULT) ...",
}


def _module(pattern: str) -> str:
    return re.sub(r"\\(.)", r"\1", pattern)  # the module name its regex matches


def test_each_harmless_warning_is_filtered_from_its_source_only() -> None:
    assert set(EXAMPLES) == set(HARMLESS_WARNINGS) and all(len(h.why) > 40 for h in HARMLESS_WARNINGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        for h, message in EXAMPLES.items():
            warnings.warn_explicit(message, h.category, "lib.py", 1, module=_module(h.source))
            warnings.warn_explicit(message, h.category, "ours.py", 1, module="peftlab.something")  # not filtered
        warnings.warn_explicit("some other warning", FutureWarning, "lib.py", 1,
                               module=_module(HARMLESS_WARNINGS[0].source))
    assert [w.filename for w in caught] == ["ours.py"] * len(EXAMPLES) + ["lib.py"]


def test_lightning_tips_are_dropped_and_its_other_lines_kept(caplog) -> None:
    (tip,) = HARMLESS_LOGS
    quiet_known_warnings()
    quiet_known_warnings()  # idempotent: one filter
    logger = logging.getLogger(tip.source)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=tip.source):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
