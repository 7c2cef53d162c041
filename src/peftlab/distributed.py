"""Multi-process training that gives the single-process answer (docs/multi_gpu.md).

What this module provides, and who uses it:

- collectives that are no-ops in a single process (:func:`mean`, :func:`all_reduce_mean_`,
  :func:`all_gather_objects`), so a method's code reads the same with one process or many. Every collective of
  peftlab goes through them, on the process group the strategy built: gloo on CPUs, NCCL on GPUs, which reduces
  tensors in GPU memory only. So a method reduces a gradient where it is computed (on the module's device: SMT
  ``grad_only``, SPT, SpIEL, inside backward) or reads it after DDP averaged it (SMT ``full``, AdaLoRA), and never
  reduces what it keeps in CPU memory (SMT's offloaded sums); :func:`all_reduce_mean_` refuses a tensor the
  group's backend cannot take, with that advice. Objects (decisions, evaluation outputs) travel pickled, which
  torch moves to the current GPU under NCCL;
- :func:`assert_same`: a digest of a decision (SMT's blocks, LISA's layers, SpIEL's indices, SPT's allocation)
  compared across processes, failing loudly on every process when they differ (processes that silently train
  different models are the failure mode this guards against);
- :func:`gather_batches`: every process evaluates its share of whole evaluation batches
  (:class:`peftlab.data.EvalShardSampler`), the per-batch outputs are gathered and put back in the order one
  process would have produced them, padding batches dropped, so metrics are computed over the whole set exactly
  once per evaluation and are identical on every process (``*_best`` is global by construction);
- :class:`MethodDDPStrategy`: Lightning's DDP, wrapped around exactly the tensors the method trains *now*.
  Methods whose trainable set changes during ``fit`` (SMT's switch, LISA's draws, SPT's switch) re-wrap it
  (:meth:`MethodDDPStrategy.rewrap`); tensors that require grad only so that the method can read their gradient
  (SMT ``grad_only`` warm-up, SPT sensitivity: ``Method.probed_parameters``) are kept out of DDP's reducer,
  whose hooks would otherwise wait for gradients the method frees during backward;
- :func:`build_strategy` / :func:`check_strategy`: ``trainer.strategy=ddp`` (any of Lightning's subprocess DDP
  names) becomes :class:`MethodDDPStrategy`; settings that cannot work fail before anything loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from peftlab.config_utils import require


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of ``tensor`` over every process (sum then divide: gloo has no AVG). ``tensor`` must be
    where the process group reduces (NCCL: the GPU)."""
    if world_size() > 1:
        backend = str(dist.get_backend())
        if tensor.device.type == "cpu" and "gloo" not in backend and "mpi" not in backend:
            raise RuntimeError(f"a collective on a CPU tensor under the {backend} process group, which reduces GPU "
                               "memory only: reduce the gradient on its device before moving it to the CPU")
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over every process, as a new tensor (``tensor`` itself in one process)."""
    return all_reduce_mean_(tensor.detach().clone()) if world_size() > 1 else tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def digest(obj: Any) -> str:
    """SHA-256 of nested dicts/lists/tuples of tensors and plain values (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, Mapping):
            h.update(b"{")
            for key in sorted(x, key=str):
                feed(str(key))
                feed(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for value in x:
                feed(value)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def assert_same(what: str, obj: Any) -> None:
    """Fail on every process when ``obj`` (a decision every process must share) differs between processes."""
    if world_size() == 1:
        return
    digests = all_gather_objects(digest(obj))
    if len(set(digests)) > 1:
        per_rank = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise RuntimeError(f"{what} differs between processes ({per_rank}): they would train different models "
                           "(a method read something local to one process; see docs/multi_gpu.md)")


def gather_batches(outputs: list[Any], num_batches: int | None) -> list[Any]:
    """Per-batch evaluation outputs of every process, in the order of one process's loop over the whole set.

    Process ``r`` evaluated global batches ``r, r + W, r + 2W, ...`` (:class:`peftlab.data.EvalShardSampler`),
    padded with repeats so that every process runs the same number of batches; global batch ``j`` is therefore
    local batch ``j // W`` of process ``j % W``, and batches ``j >= num_batches`` are padding, dropped here."""
    if world_size() == 1:
        return outputs
    require(num_batches is not None, "evaluation under several processes needs the evaluation loaders of "
            "peftlab.data.TaskDataModule (whole batches sharded per process)")
    per_rank = all_gather_objects(outputs)
    w = len(per_rank)
    ordered: list[Any] = []
    for j in range(int(num_batches)):  # type: ignore[arg-type]
        if j // w >= len(per_rank[j % w]):  # a shortened loop (sanity check, limit_*_batches): stop there
            break
        ordered.append(per_rank[j % w][j // w])
    return ordered


# ---------------------------------------------------------------- DDP that follows the method's trainable set
class MethodDDPStrategy(DDPStrategy):
    """Lightning's :class:`~pytorch_lightning.strategies.DDPStrategy` (subprocess launcher), with two changes:

    - the wrapper leaves out the parameters the LightningModule names in ``ddp_ignored_parameters()`` (tensors
      probed for gradients, never updated), and when nothing else trains (SPT's sensitivity phase) the module
      runs unwrapped (DDP refuses a module without trainable parameters; there is nothing to average);
    - :meth:`rewrap` builds a new wrapper after the method changed what trains, so DDP averages exactly the new
      trainable tensors (a wrapper built before the change would wait for gradients of frozen tensors and never
      average the new ones). The old wrapper's autograd hooks are removed first; the new one skips DDP's initial
      broadcast (every process already holds the same values, which :func:`assert_same` checks where a method
      decides something).
    """

    def _setup_model(self, model: nn.Module, init_sync: bool = True) -> nn.Module:  # type: ignore[override]
        ignored = set(getattr(model, "ddp_ignored_parameters", set)())
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignored))
        if not any(p.requires_grad for n, p in model.named_parameters() if n not in ignored):
            return model
        device_ids = self.determine_ddp_device_ids()
        # as Lightning's DDPStrategy: built on a side stream on GPU (https://pytorch.org/docs/stable/notes/cuda.html)
        with torch.cuda.stream(torch.cuda.Stream()) if device_ids is not None else nullcontext():
            return DistributedDataParallel(module=model, device_ids=device_ids, init_sync=init_sync, **self._ddp_kwargs)

    def configure_ddp(self, init_sync: bool = True) -> None:
        self.model = self._setup_model(self.lightning_module, init_sync)
        if isinstance(self.model, DistributedDataParallel):
            self._register_ddp_hooks()

    def rewrap(self) -> None:
        """Wrap the LightningModule again, around the parameters that train now."""
        if isinstance(self.model, DistributedDataParallel):
            self.model._remove_autograd_hooks()
        self.configure_ddp(init_sync=False)


def follow_trainable_set(strategy: Any) -> None:
    """After the method changed its trainable tensors: re-wrap DDP (other strategies are refused up front by
    :func:`check_strategy` for such methods; a single process has nothing to do)."""
    if isinstance(strategy, MethodDDPStrategy):
        strategy.rewrap()


# ---------------------------------------------------------------- trainer.strategy: validation and building
_LIGHTNING_DDP_TARGETS = ("pytorch_lightning.strategies.DDPStrategy", "pytorch_lightning.strategies.ddp.DDPStrategy",
                          "lightning.pytorch.strategies.DDPStrategy")


def _strategy_kind(value: Any) -> str:
    """'ddp' (a Lightning DDP name or target), 'fsdp', 'deepspeed', or 'other' ('auto', single device...)."""
    if isinstance(value, str):
        if value in StrategyRegistry and StrategyRegistry[value]["strategy"] is DDPStrategy:  # .get() builds one
            return "ddp"
        return "fsdp" if value.startswith("fsdp") else "deepspeed" if value.startswith("deepspeed") else "other"
    target = str((value or {}).get("_target_", "")) if isinstance(value, Mapping) else ""
    if target in _LIGHTNING_DDP_TARGETS or target.endswith("MethodDDPStrategy"):
        return "ddp"
    return "fsdp" if target.endswith("FSDPStrategy") else "deepspeed" if "DeepSpeed" in target else "other"


def check_strategy(strategy: Any, method_name: str, changes_trainable_set: bool,
                   frozen_dtype: str | None = None) -> None:
    """Fail before anything loads when ``trainer.strategy`` cannot train this method correctly (``frozen_dtype``:
    the load dtype of the weights the method keeps frozen, None when it trains every weight)."""
    kind = _strategy_kind(strategy)
    if kind == "ddp" and isinstance(strategy, str):
        start = StrategyRegistry[strategy]["init_params"].get("start_method", "popen")
        require(start == "popen", f"trainer.strategy={strategy} starts processes by {start}, which peftlab does "
                "not support (the run record and the method's state live in the launching process); use "
                "trainer.strategy=ddp")
    require(kind != "deepspeed", f"trainer.strategy={strategy}: DeepSpeed is not supported (docs/multi_gpu.md "
            "says why); use trainer=fsdp to shard parameters and optimizer state")
    require(kind != "fsdp" or not changes_trainable_set, f"method={method_name} changes its trainable tensors "
            "during training, which FSDP's flat parameters cannot follow; use trainer=ddp (docs/multi_gpu.md)")
    # torch FSDP flattens each unit into tensors of one dtype; the precision rule trains fp32 tensors beside them
    require(kind != "fsdp" or frozen_dtype in (None, "float32"), f"trainer.strategy=fsdp with model.dtype="
            f"{frozen_dtype}: FSDP flattens each unit into one dtype, and method={method_name} trains fp32 tensors "
            "beside the frozen half-precision weights; set model.dtype=float32 (bf16-mixed still computes in bf16; "
            "docs/precision.md)")


def build_strategy(strategy: Any) -> Any:
    """What ``Trainer(strategy=...)`` gets for the config value: Lightning's subprocess DDP (by name or by
    ``_target_``) becomes :class:`MethodDDPStrategy` with the same options; anything else is unchanged (a
    ``_target_`` mapping is instantiated)."""
    import hydra

    if _strategy_kind(strategy) == "ddp":
        if isinstance(strategy, str):
            return MethodDDPStrategy(**StrategyRegistry[strategy]["init_params"])
        return hydra.utils.instantiate({**strategy, "_target_": f"{__name__}.MethodDDPStrategy"})
    if isinstance(strategy, Mapping) and "_target_" in strategy:
        return hydra.utils.instantiate(strategy)
    return strategy


def launch_position(trainer: Any) -> tuple[int, int]:
    """(global rank, world size) this process will have, known before ``fit`` initialises the process group
    (from the cluster environment: Lightning's ``LOCAL_RANK``/``NODE_RANK``, SLURM, torchrun), as DDP/FSDP
    compute them."""
    strategy = trainer.strategy
    environment = getattr(strategy, "cluster_environment", None)
    if environment is None:
        return 0, 1
    per_node = getattr(strategy, "num_processes", 1)
    return environment.node_rank() * per_node + environment.local_rank(), per_node * getattr(strategy, "num_nodes", 1)


def check_launch(trainer: Any) -> None:
    """Lightning's subprocess launcher re-runs the command line in each new process; inside a Hydra multirun
    that would start the whole sweep again in every process. SLURM/torchrun start the processes themselves."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    environment = getattr(trainer.strategy, "cluster_environment", None)
    launched_here = environment is not None and not environment.creates_processes_externally
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    require(not (launched_here and launch_position(trainer)[1] > 1 and multirun),
            "a multirun (-m) cannot start several processes per run: run each point as its own command, or sweep "
            "with hydra/launcher=submitit_slurm, where SLURM starts the processes (docs/multi_gpu.md)")
