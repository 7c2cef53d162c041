"""The run config's own options (``conf/config.yaml``'s top-level keys and ``optim``) as typed dataclasses.

``peftlab.train.validate_config`` builds them with :func:`peftlab.config_utils.build_dataclass`, so a key the run
does not read (``+foo=1``), a wrong type (``seed=abc``) or a value out of range (``seed=-1``) fails with one line
before anything loads. Every top-level key of ``conf/config.yaml`` and of the experiment files is a field here
(``tests/unit/test_configs.py`` checks it); the config groups (model, method, task...) are checked by their own
dataclasses and Lightning's signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from peftlab.config_utils import Dropout, NonNegativeFloat, NonNegativeInt, PositiveFloat, Seed, require


@dataclass
class RunConfig:
    """Top-level keys of the composed run config (see the comments in ``conf/config.yaml``)."""

    model: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] | None = None
    callbacks: dict[str, Any] | None = None
    optim: dict[str, Any] = field(default_factory=dict)  # checked as OptimConfig
    paths: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # which value a table cell reads (docs/tables.md)
    table: dict[str, Any] | None = None  # a paper table's settings (conf/experiment/*.yaml)
    seed: Seed = 0
    tags: list[str] = field(default_factory=list)
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    auto_resume: bool = True
    num_workers: NonNegativeInt = 0
    objective: str | None = None


OPTIMIZERS = ("adamw_torch", "adamw_hf")  # peftlab.optim.build_optimizer
SCHEDULES = ("linear", "timm_cosine")  # peftlab.optim.build_scheduler


@dataclass
class OptimConfig:
    """``optim``: the optimizer and lr schedule, HF Trainer's recipe (:mod:`peftlab.optim`); the learning rate is
    ``method.lr``."""

    optimizer: str = "adamw_torch"  # one of OPTIMIZERS
    weight_decay: NonNegativeFloat = 0.0
    betas: list[Dropout] = field(default_factory=lambda: [0.9, 0.999])  # each in [0, 1)
    eps: PositiveFloat = 1e-8
    schedule: str = "linear"  # one of SCHEDULES
    warmup_ratio: Dropout = 0.06  # in [0, 1)
    warmup_steps: NonNegativeInt | None = None
    warmup_lr: NonNegativeFloat = 0.0  # timm_cosine only
    min_lr: NonNegativeFloat = 0.0  # timm_cosine only
    offload: bool = False  # the optimizer of full-parameter phases in CPU memory (peftlab.offload)

    def __post_init__(self) -> None:
        require(len(self.betas) == 2, f"optim.betas must hold two numbers (AdamW's β1, β2), got {self.betas}")
        require(self.optimizer in OPTIMIZERS, f"optim.optimizer must be one of {OPTIMIZERS}, got '{self.optimizer}'")
        require(self.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}, got '{self.schedule}'")
        if self.schedule == "linear":
            require(self.warmup_lr == 0 and self.min_lr == 0, f"optim.warmup_lr={self.warmup_lr} and optim.min_lr="
                    f"{self.min_lr} shape optim.schedule=timm_cosine only (linear rises from 0 and decays to 0): set "
                    "them to 0, or optim.schedule=timm_cosine")
        else:
            require(self.warmup_steps is None, f"optim.schedule=timm_cosine warms up over optim.warmup_ratio of the "
                    f"epochs, not steps: set optim.warmup_steps=null (it is {self.warmup_steps})")


def top_level(cfg: DictConfig) -> dict[str, Any]:
    """The top-level keys of ``cfg`` and their values; sub-configs stay unresolved nodes (``paths.output_dir``
    resolves only inside a Hydra run), lists and scalars are resolved."""
    values = {}
    for key in cfg:
        value = cfg[key]
        values[str(key)] = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    return values
