"""CapaBoost's fixed binary masks: drawn once from a seed, never trained.

Official behaviour (LINs-lab/CapaBoost, ``init_masks_for_tied_weights`` in ``src/transformers/adapters/lora.py``
and ``layer.py``): every copy of every masked weight gets its own mask keeping exactly
``int(numel · density)`` positions, chosen uniformly without replacement ("equal_per_layer"); the LoRA path
also offers 2:4 structured masks (``NM_structured``: in each group of 4 consecutive entries keep 2, at random).

Where we depart, and why:
- The official masks come from one NumPy ``RandomState(0)`` consumed in order over layers and copies, so they
  ignore the training seed and change when the set of targeted modules changes. Ours come from a
  ``torch.Generator`` seeded by (``mask_seed``, module name, weight name): reproducible, recorded, and
  independent of which other modules are targeted.
- The official N:M option groups the *flattened* weight, so a group may straddle two rows. We group along the
  last (input) dimension only, which is the layout sparse tensor cores accelerate; that needs the last
  dimension to be a multiple of M.
"""

from __future__ import annotations

import hashlib

import torch

from peftlab.config_utils import require


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"random"`` → None; ``"N:M"`` (e.g. ``"2:4"``) → (N, M). Raises ConfigError otherwise."""
    if pattern == "random":
        return None
    parts = pattern.split(":")
    ok = len(parts) == 2 and all(p.isdigit() for p in parts) and 0 < int(parts[0]) <= int(parts[1])
    require(ok, f"method.mask_pattern must be 'random' or 'N:M' with 0 < N <= M (e.g. '2:4'), got '{pattern}'")
    return int(parts[0]), int(parts[1])


def weight_seed(mask_seed: int, module_name: str, weight_name: str) -> int:
    """A 63-bit seed for one weight's masks, stable across processes and platforms (no Python ``hash``)."""
    digest = hashlib.sha256(f"{mask_seed}|{module_name}|{weight_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def exact_count_mask(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """Bool mask keeping exactly ``int(numel · density)`` uniformly chosen positions (official truncation)."""
    numel = int(torch.Size(shape).numel())
    keep = int(numel * density)
    require(keep > 0, f"mask density {density} keeps no entry of a weight of shape {tuple(shape)}")
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:keep]] = True
    return flat.view(shape)


def n_of_m_mask(shape: tuple[int, ...], n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """Bool mask keeping ``n`` random entries in every group of ``m`` consecutive entries of the last dim."""
    require(shape[-1] % m == 0, f"an {n}:{m} mask needs the last dimension of {tuple(shape)} to be a multiple of {m}")
    groups = torch.rand((*shape[:-1], shape[-1] // m, m), generator=generator)  # (..., groups, m)
    keep = groups.argsort(dim=-1)[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.view(shape)


def draw_masks(
    shape: tuple[int, ...], copies: int, density: float, pattern: str, seed: int
) -> torch.Tensor:
    """``copies`` independent masks for one weight of ``shape``: a bool tensor of shape ``(copies, *shape)``.

    The copies are drawn in order from one generator seeded with ``seed`` (see :func:`weight_seed`).
    """
    generator = torch.Generator().manual_seed(seed)
    nm = parse_pattern(pattern)
    if nm is None:
        return torch.stack([exact_count_mask(shape, density, generator) for _ in range(copies)])
    return torch.stack([n_of_m_mask(shape, *nm, generator) for _ in range(copies)])


def union_fraction(density: float, copies: int) -> float:
    """Expected fraction of a weight that at least one of ``copies`` independent masks keeps: 1 − (1 − p)^d."""
    return 1.0 - (1.0 - density) ** copies
