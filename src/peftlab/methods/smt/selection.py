"""SMT block scoring and selection (arXiv 2405.15525 §3; official code ``deepspeed/`` selection step).

The warm-up gradient sum G of each eligible matrix (shape ``out × in``) is cut into ``b × b`` blocks; each
block gets a score and blocks are chosen once (official ``select_submatrix_based_on_grads`` in
``deepspeed/smt/smt_helper.py``):

- ``global``: the top-k over all matrices of a pool at once (official ``no_restriction``, the default);
- ``norm_dist``: the top-k of *every* matrix, k·M blocks in all for M matrices (official ``norm_dist``: the
  same n is passed and each matrix keeps ``argsort(scores)[:n]``; reported worse in the paper);
- ``per_matrix`` (ours, not in the official code): k blocks in all, k/M from each matrix, so the budget stays
  that of ``global`` while every matrix is tuned.

``random`` is the control reviewers of SMT asked for (not in the official code): the same number of blocks
drawn uniformly without replacement from the same pool, seeded by the run seed; the warm-up still runs, so
the only difference from ``global`` is which blocks are chosen.
"""

from __future__ import annotations

import math

import torch

from peftlab.config_utils import require
from peftlab.methods.base import keyed_generator


def block_view(matrix: torch.Tensor, b: int) -> torch.Tensor:
    """``(out, in)`` → ``(out/b, in/b, b, b)``: block ``[r, c]`` is ``matrix[r*b:(r+1)*b, c*b:(c+1)*b]``."""
    rows, cols = matrix.shape
    return matrix.view(rows // b, b, cols // b, b).permute(0, 2, 1, 3)


def block_scores(grad: torch.Tensor, b: int, score: str) -> torch.Tensor:
    """Score of every block of ``grad``: ``(out/b, in/b)``.

    mean_abs = |mean(block)| (official default; signed sum first, so gradients that flip sign cancel),
    abs_mean = mean(|block|), l1 = sum(|block|), l2 = Frobenius norm of the block.
    """
    blocks = block_view(grad.float(), b)
    if score == "mean_abs":
        return blocks.mean(dim=(-2, -1)).abs()
    if score == "abs_mean":
        return blocks.abs().mean(dim=(-2, -1))
    if score == "l1":
        return blocks.abs().sum(dim=(-2, -1))
    if score == "l2":
        return blocks.pow(2).sum(dim=(-2, -1)).sqrt()
    raise ValueError(f"unknown SMT score '{score}'")


def _split(flat: torch.Tensor, sizes: list[int], names: list[str]) -> dict[str, list[int]]:
    """Global flat indices → per-matrix sorted local indices (matrices with no pick are left out)."""
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    out: dict[str, list[int]] = {}
    for name, lo, hi in zip(names, offsets[:-1], offsets[1:], strict=True):
        local = sorted(int(i) - lo for i in flat.tolist() if lo <= i < hi)
        if local:
            out[name] = local
    return out


def select_global(scores: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """Top-``k`` blocks over every matrix of the pool; indices are row-major in each matrix's block grid."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    require(0 < k <= flat.numel(), f"SMT budget of {k} blocks does not fit the {flat.numel()} eligible blocks")
    top = torch.topk(flat, k, sorted=False).indices
    return _split(top, [scores[n].numel() for n in names], names)


def select_norm_dist(scores: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """The official ``norm_dist``: the top-``k`` blocks of every matrix (k·M in all; ``k`` must not exceed the
    blocks of the smallest matrix, which SMT checks when it is applied)."""
    return {n: sorted(torch.topk(s.flatten(), k).indices.tolist()) for n, s in scores.items()}


def select_per_matrix(scores: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """``k // M`` blocks from each of the M matrices; the ``k mod M`` left over go to the matrices whose next
    best block scores highest (so exactly ``k`` blocks are chosen)."""
    names = list(scores)
    total = sum(s.numel() for s in scores.values())
    require(0 < k <= total, f"SMT budget of {k} blocks does not fit the {total} eligible blocks")
    base = k // len(names)
    counts = {n: min(base, scores[n].numel()) for n in names}
    # leftover picks (and picks a too-small matrix could not take) go by next-best score, one round at a time
    while sum(counts.values()) < k:
        candidates = {n: torch.sort(scores[n].flatten(), descending=True).values[counts[n]]
                      for n in names if counts[n] < scores[n].numel()}
        need = k - sum(counts.values())
        for n in sorted(candidates, key=lambda n: -float(candidates[n]))[:need]:
            counts[n] += 1
    out: dict[str, list[int]] = {}
    for n in names:
        if counts[n]:
            out[n] = sorted(torch.topk(scores[n].flatten(), counts[n]).indices.tolist())
    return out


def select_random(scores: dict[str, torch.Tensor], k: int, seed: int) -> dict[str, list[int]]:
    """``k`` blocks drawn uniformly without replacement over every matrix of the pool (scores give only the
    grid shapes). The generator is seeded by ``seed`` and the pool's matrix names, so pools draw independently
    and a seed always gives the same blocks."""
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    require(0 < k <= sum(sizes), f"SMT budget of {k} blocks does not fit the {sum(sizes)} eligible blocks")
    generator = keyed_generator(seed, "\n".join(names))
    return _split(torch.randperm(sum(sizes), generator=generator)[:k], sizes, names)


def select_blocks(scores: dict[str, torch.Tensor], k: int, mode: str, seed: int = 0) -> dict[str, list[int]]:
    """Chosen block indices per matrix name, for ``mode`` in ``global`` / ``norm_dist`` / ``per_matrix`` /
    ``random`` (``seed`` is used by ``random`` only)."""
    if mode == "global":
        return select_global(scores, k)
    if mode == "norm_dist":
        return select_norm_dist(scores, k)
    if mode == "per_matrix":
        return select_per_matrix(scores, k)
    if mode == "random":
        return select_random(scores, k, seed)
    raise ValueError(f"unknown SMT selection '{mode}'")


def budget_blocks(unit: str, value: float, b: int, all_2d_numel: int) -> int:
    """Number of blocks a budget means.

    ratio: ``int(value × Σ numel(2-D params) / b²)``, every 2-D parameter counted, embeddings and head
    included: the official definition (LLaMA-7B, b=256, 0.0084 → 863 blocks = 56,557,568 params).
    blocks: ``value``. params: ``floor(value / b²)`` (a LoRA/DoRA budget matched from below).
    """
    if unit == "ratio":
        return int(value * all_2d_numel / (b * b))
    if unit == "blocks":
        return int(value)
    if unit == "params":
        return math.floor(value / (b * b))
    raise ValueError(f"unknown SMT budget unit '{unit}'")
