"""Train and evaluate one model × method × task.

    python train.py                                   # offline demo: MiniLM + LoRA on the synthetic pair task
    python train.py method=full task=rte model=roberta_base
    python train.py -m method=full,lora seed=0,1      # Hydra multirun

Exit status: 0 done; 2 bad input (one line ``error: ...``, before training); 1 a crash (traceback), or a multirun
with failed runs (each listed at the end, see peftlab/sweep.py).
"""

import logging

import hydra
from omegaconf import DictConfig

from peftlab.errors import PeftlabError, fail
from peftlab.sweep import write_outcome
from peftlab.train import run

log = logging.getLogger("peftlab")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        metrics = run(cfg)
    except Exception as err:
        if not multirun:
            if isinstance(err, PeftlabError):
                fail(err)
            raise
        # keep the sweep going; its end lists this job (peftlab.sweep.SweepSummary) and exits 1
        log.error("run failed: %s", err, exc_info=not isinstance(err, PeftlabError))
        write_outcome(hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task), err)
        return None
    if multirun:
        write_outcome(hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task), None)
    return metrics.get(f"test/{cfg.get('objective', '')}")


if __name__ == "__main__":
    main()
