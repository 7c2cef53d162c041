"""SPT's budget allocation (arXiv 2303.08566 Sec. 3.2; official ``train_spt.py`` / ``engine.py``).

Given summed sensitivities S (grad² per entry), take the global top-τ entries. Per weight matrix with
``c`` selected entries: if ``c ≥ LoRA(m)/α`` (LoRA(m) = r·(d_in + d_out)) the matrix gets a structured
rank-r LoRA and costs LoRA(m), else the ``c`` entries are tuned and cost ``c``. Per vector: fully tuned
(costs its size n) if ``c ≥ n/β``, else its ``c`` entries. The paper sweeps τ and keeps the τ whose total
is closest to each target budget; :func:`allocate` does the same over a geometric grid of τ refined
linearly around the best (the official grid is fixed steps of 0.02M, which a tiny model cannot use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peftlab.config_utils import require

GRID = 256  # τ values per search pass (coarse geometric, then linear between the best's neighbours)


@dataclass
class Entry:
    """One ranked tensor: ``lora`` is its LoRA cost for a matrix, None for a vector."""

    name: str
    numel: int
    lora: int | None


@dataclass
class Decision:
    mode: str  # "lora" | "full" | "sparse"
    indices: torch.Tensor | None  # flat indices of the tuned entries (sparse only)

    def cost(self, entry: Entry) -> int:
        if self.mode == "lora":
            return int(entry.lora or 0)
        return entry.numel if self.mode == "full" else int(self.indices.numel())  # type: ignore[union-attr]


def max_cost(entries: list[Entry], alpha: float) -> int:
    """The largest total any τ can give (τ = all entries): matrices LoRA (or all entries when even all of them
    are below LoRA/α), vectors full; a tensor's cost never exceeds this at a smaller τ."""
    return sum(e.lora if e.lora is not None and e.numel * alpha >= e.lora else e.numel for e in entries)


def _costs(counts: torch.Tensor, numel: torch.Tensor, lora: torch.Tensor, is_matrix: torch.Tensor,
           alpha: float, beta: float) -> torch.Tensor:
    """Total cost for each τ; ``counts`` is (n_tau, n_tensors) selected entries per tensor."""
    structured = torch.where(is_matrix, counts * alpha >= lora, counts * beta >= numel)
    whole = torch.where(is_matrix, lora, numel)
    return torch.where(structured, whole, counts).sum(1)


def allocate(scores: dict[str, torch.Tensor], entries: list[Entry], budget: int, alpha: float,
             beta: float) -> tuple[int, dict[str, Decision]]:
    """(τ, decision per tensor name) whose total cost is closest to ``budget`` (ties: the smaller τ)."""
    most = max_cost(entries, alpha)
    require(budget <= most, f"SPT budget {budget:,} exceeds the most these tensors can take ({most:,}: every "
            "matrix LoRA, every vector full); lower method.budget")
    flat = torch.cat([scores[e.name].flatten().float() for e in entries])
    order = torch.argsort(flat, descending=True, stable=True)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.numel(), device=order.device)
    ranks, start = [], 0
    for e in entries:  # each tensor's entries' global ranks, sorted: count(τ) = searchsorted(ranks, τ)
        ranks.append(torch.sort(rank_of[start:start + e.numel]).values)
        start += e.numel
    numel = torch.tensor([e.numel for e in entries])
    lora = torch.tensor([e.lora or 0 for e in entries])
    is_matrix = torch.tensor([e.lora is not None for e in entries])

    def totals(taus: torch.Tensor) -> torch.Tensor:
        counts = torch.stack([torch.searchsorted(r.cpu(), taus) for r in ranks], dim=1)
        return _costs(counts, numel, lora, is_matrix, alpha, beta)

    n = flat.numel()
    taus = torch.unique(torch.logspace(0, torch.log10(torch.tensor(float(n))), GRID).round().long().clamp(1, n))
    best = int(torch.argmin((totals(taus) - budget).abs()))  # argmin returns the first (smallest τ) on ties
    lo, hi = int(taus[max(best - 1, 0)]), int(taus[min(best + 1, len(taus) - 1)])
    fine = torch.unique(torch.linspace(lo, hi, GRID).round().long())
    tau = int(fine[int(torch.argmin((totals(fine) - budget).abs()))])
    decisions: dict[str, Decision] = {}
    start = 0
    for e, r in zip(entries, ranks, strict=True):
        count = int(torch.searchsorted(r.cpu(), torch.tensor([tau]))[0])
        if count == 0:
            start += e.numel
            continue
        if (e.lora is not None and count * alpha >= e.lora) or (e.lora is None and count * beta >= e.numel):
            decisions[e.name] = Decision("lora" if e.lora is not None else "full", None)
        else:
            local = torch.nonzero(rank_of[start:start + e.numel] < tau).flatten()
            decisions[e.name] = Decision("sparse", local)
        start += e.numel
    return tau, decisions
