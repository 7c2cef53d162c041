"""Train and evaluate one model × method × task.

    python train.py                                   # offline demo: MiniLM + LoRA on the synthetic pair task
    python train.py method=full task=rte model=roberta_base
    python train.py -m method=full,lora seed=0,1      # Hydra multirun
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from peftlab.errors import PeftlabError
from peftlab.results import register_resolvers
from peftlab.train import run

log = logging.getLogger("peftlab")
register_resolvers()  # ${pid:} in the run directory (conf/config.yaml)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        metrics = run(cfg)
    except PeftlabError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # keep the sweep going
            log.error("run failed: %s", err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get(f"test/{cfg.get('objective', '')}")


if __name__ == "__main__":
    main()
