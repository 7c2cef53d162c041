"""Run records: one JSON per run under ``results/runs/``, written atomically, with everything that
produced the numbers (resolved config, git commit, hardware, package versions) and a ``status``.

Only records with ``status == "complete"`` are results; tables are built from them alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/peftlab/results.py → the repository (editable install)
PACKAGES = ("torch", "transformers", "peft", "pytorch-lightning", "datasets", "timm", "hydra-core", "numpy")
RECORD_VERSION = 1


def git_commit(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool}`` of the repository holding ``cwd``."""
    where = cwd or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocator peak (GPU) and max RSS (CPU), in MiB."""
    import resource

    out: dict[str, Any] = {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def command() -> str:
    """The command that reproduces this run: ``python train.py`` + this job's Hydra overrides (one job of a
    multirun gets its own point, e.g. ``seed=1`` rather than ``seed=0,1``); outside Hydra, ``sys.argv``."""
    import shlex
    import sys

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return shlex.join(sys.argv)
    return shlex.join(["python", "train.py", *HydraConfig.get().overrides.task])


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_path(results_dir: str | os.PathLike[str], task: str, method: str, model: str, seed: int) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return Path(results_dir) / task / method / model / f"seed{seed}_{stamp}.json"


def repo_relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository root when it lies inside it (records, pointers and exports travel with
    the repository: no absolute path of one machine), else absolute. :func:`from_repo` is the inverse."""
    absolute = Path(path).absolute()
    for candidate in (absolute, absolute.resolve()):
        if candidate.is_relative_to(REPO_ROOT):
            return str(candidate.relative_to(REPO_ROOT))
    return str(absolute)


def from_repo(path: str | os.PathLike[str]) -> Path:
    """A path as records store it (:func:`repo_relative`): relative ones are relative to the repository root."""
    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path


def repo_relative_paths(data: Any) -> Any:
    """``data`` (a record, a resolved config) with every string that is an absolute path inside the repository
    made relative to it; other values unchanged."""
    if isinstance(data, dict):
        return {k: repo_relative_paths(v) for k, v in data.items()}
    if isinstance(data, list):
        return [repo_relative_paths(v) for v in data]
    if isinstance(data, str) and os.path.isabs(data):
        relative = repo_relative(data)
        return data if os.path.isabs(relative) else relative
    return data


def register_resolvers() -> None:
    """``${pid:}`` (this process's id), used with microseconds in conf/config.yaml's run and sweep directories so
    that two runs started at the same moment never share a directory."""
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", os.getpid)
