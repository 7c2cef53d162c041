"""Options of Sparse Matrix Tuning (SMT, He et al., arXiv 2405.15525); defaults follow the paper and its
official code (HectorHHZ/Sparse_Matrix_Tuning) unless a comment says otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peftlab.config_utils import NonNegativeInt, PositiveFloat, PositiveInt, require
from peftlab.methods.base import MethodConfig

SCORES = ("mean_abs", "abs_mean", "l1", "l2")
SELECTIONS = ("global", "norm_dist", "per_matrix", "random")
BLOCK_SIZES = (256, 128, 64, 32, 16, 8)  # block_size=auto: the largest of these dividing every eligible matrix
BUDGET_UNITS = ("ratio", "blocks", "params")
WARMUP_MODES = ("full", "grad_only")
# ``auto`` values (the defaults): the paper's settings, fitted to the run's model and length (SmtConfig.resolve_*)
PAPER_LR, PAPER_SMT_LR = 9.65e-6, 1e-4  # tuned on LLaMA-7B: official deepspeed/fine_tune.py (see conf/method/smt.yaml)
PAPER_WIDTH = 4096  # LLaMA-7B's hidden size
PAPER_WARMUP_STEPS = 100  # official deepspeed/README.md --full_ft_steps 100, of a ~32k-step commonsense run
AUTO_WARMUP_SHARE = 0.1  # auto warm-up: this share of a run shorter than PAPER_WARMUP_STEPS / AUTO_WARMUP_SHARE
ATTENTION = ("q", "k", "v", "qkv")
MLP = ("gate", "up", "down")


@dataclass
class SmtConfig(MethodConfig):
    """SMT: warm-up → score gradient blocks → train only the selected ``block_size``² blocks.

    ``lr`` is the warm-up (full fine-tuning) learning rate; ``smt_lr`` the block-training one. ``auto`` (the
    default of these two and of ``warmup_steps``) fits the paper's LLaMA-7B settings to the run, as the paper's
    100 warm-up steps at 9.65e-6 take more than half of a short CPU run on a small model and leave its blocks
    (at 1e-4) barely trained (the demo: 56% where LoRA reaches 70%); the experiment files set the papers' exact
    values. The run prints what each ``auto`` became.
    """

    lr: PositiveFloat | str = "auto"  # auto: resolve_lrs (paper: 9.65e-6 for both phases, on LLaMA-7B)
    smt_lr: PositiveFloat | str = "auto"  # auto: resolve_lrs (official comment and Llama-2 script: 1e-4 for blocks)
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v"])  # attention pool; O is never eligible
    mlp_targets: list[str] = field(default_factory=lambda: ["gate", "up", "down"])  # MLP pool (if mlp_budget)
    warmup_steps: PositiveInt | str = "auto"  # optimizer steps of warm-up before the selection; auto: resolve_warmup
    warmup_mode: str = "full"  # full: full FT as the official code; grad_only: sum gradients, update nothing
    # where the fp32 warm-up gradient sums live: True = CPU (official: grad.detach().cpu()), False = beside the
    # weights, None = CPU when the weights are on an accelerator (GPU runs), else beside them
    offload_grad_sums: bool | None = None
    smt_lr_warmup_steps: NonNegativeInt = 0  # lr warm-up of the block phase (official --smt_lr_warmup_steps, default 0)
    block_size: PositiveInt | str = "auto"  # side of the square blocks; auto: the largest of BLOCK_SIZES dividing all
    score: str = "mean_abs"  # |mean(block)| (official default), mean(|block|), L1 or L2 of the summed gradient
    # global: top-k over a pool (official no_restriction); norm_dist: top-k of EVERY matrix (official, k·M in
    # all); per_matrix: k in all, k/M per matrix (ours); random: k random blocks (the reviewers' control)
    selection: str = "global"
    selection_seed: int = 0  # seeds selection=random; conf/method/smt.yaml sets it to the run seed
    budget_unit: str = "ratio"  # ratio of blocks over ALL 2-D params (official) | blocks | params
    budget: float = 0.0084  # attention budget (official ratio 0.0084 ≈ 0.84% trainable on LLaMA-7B)
    mlp_budget: float | None = None  # MLP budget in the same unit; None = MLP not eligible (paper's advice)
    pooled: bool = False  # rank attention and MLP blocks in one pool under `budget` (mlp_budget must be null)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("lr", "smt_lr", "warmup_steps"):
            value = getattr(self, key)
            require(not isinstance(value, str) or value == "auto", f"method.{key} must be a number or auto, "
                    f"got {value!r}")
        require(self.warmup_mode in WARMUP_MODES, f"method.warmup_mode must be one of {WARMUP_MODES}, "
                f"got '{self.warmup_mode}'")
        require(not isinstance(self.block_size, str) or self.block_size == "auto",
                f"method.block_size must be an integer >= 1 or auto, got {self.block_size!r}")
        require(self.score in SCORES, f"method.score must be one of {SCORES}, got '{self.score}'")
        require(self.selection in SELECTIONS, f"method.selection must be one of {SELECTIONS}, "
                f"got '{self.selection}'")
        require(self.budget_unit in BUDGET_UNITS, f"method.budget_unit must be one of {BUDGET_UNITS}, "
                f"got '{self.budget_unit}'")
        require("o" not in self.targets and "o" not in self.mlp_targets,
                "SMT never tunes the attention output projection O (paper/official code); remove 'o' from targets")
        require(len(self.targets) > 0 or self.mlp_budget is not None,
                "method.targets is empty: SMT needs an attention matrix (q, k, v), or an MLP-only setting "
                "(method.targets=[] with method.mlp_budget set)")
        require(isinstance(self.selection_seed, int), f"method.selection_seed must be an integer, "
                f"got {self.selection_seed!r}")
        bad_mlp = [t for t in self.mlp_targets if t in ATTENTION]
        require(not bad_mlp, f"method.mlp_targets holds attention targets {bad_mlp}; put them in method.targets")
        self._check_budget("budget", self.budget)
        if self.mlp_budget is not None:
            self._check_budget("mlp_budget", self.mlp_budget)
            require(len(self.mlp_targets) > 0, "method.mlp_budget is set but method.mlp_targets is empty")
        require(not (self.pooled and self.mlp_budget is not None),
                "method.pooled=true ranks attention and MLP in one pool under method.budget; set mlp_budget=null")

    def _check_budget(self, key: str, value: float) -> None:
        require(value > 0, f"method.{key} must be > 0 (zero budget trains nothing), got {value}")
        if self.budget_unit == "ratio":
            require(value <= 1, f"method.{key} is a ratio of blocks and must be <= 1, got {value}")
        else:
            require(float(value).is_integer(), f"method.{key} counts {self.budget_unit} and must be an integer, "
                    f"got {value}")

    def resolve_lrs(self, width: int) -> tuple[float, float]:
        """(lr, smt_lr); ``auto``: the paper's LLaMA-7B values × 4096 / ``width`` (the hidden size of the eligible
        matrices): µP's rule that Adam's learning rate for hidden weights scales as 1/width (Yang et al., Tensor
        Programs V, arXiv 2203.03466, Table 3). Exactly the paper's values on a 4096-wide model; MiniLM (384):
        1.03e-4 and 1.07e-3."""
        scale = PAPER_WIDTH / width
        return (PAPER_LR * scale if self.lr == "auto" else float(self.lr),
                PAPER_SMT_LR * scale if self.smt_lr == "auto" else float(self.smt_lr))

    def resolve_warmup(self, total_steps: int) -> int:
        """Warm-up steps; ``auto``: the paper's 100, or 10% of a shorter run's optimizer steps (at least 1), so
        that blocks train for most of any run (the paper's 100 are 0.3% of its run)."""
        if self.warmup_steps != "auto":
            return int(self.warmup_steps)
        return max(1, min(PAPER_WARMUP_STEPS, round(AUTO_WARMUP_SHARE * total_steps)))

    def offloads(self, device: torch.device) -> bool:
        """Whether the warm-up gradient sums of weights on ``device`` are kept on the CPU."""
        return self.offload_grad_sums if self.offload_grad_sums is not None else device.type not in ("cpu", "meta")

    @property
    def pool_targets(self) -> dict[str, tuple[list[str], float]]:
        """Pool name → (logical targets, budget) ranked separately, as the official code does."""
        if self.pooled:
            return {"all": (list(self.targets) + list(self.mlp_targets), self.budget)}
        pools = {"attention": (list(self.targets), self.budget)} if self.targets else {}  # empty: MLP-only
        if self.mlp_budget is not None:
            pools["mlp"] = (list(self.mlp_targets), self.mlp_budget)
        return pools
