"""Exemplar selection for replay: exact iCaRL herding, plus random/reservoir baselines, one interface.

Every selector returns a ranking of row indices whose prefixes are themselves valid selections,
so shrinking a group's budget keeps the first m exemplars and never needs the old features.
"""

import dataclasses
import json
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from trainer.common.artifacts import atomic_write_json
from trainer.common.errors import ReplayBufferError

Group = tuple[str, str]  # (domain, label)
STRATEGIES: tuple[str, ...] = ("herding", "random", "reservoir")
BUFFER_FORMAT = 1


def _check(features: torch.Tensor, m: int) -> int:
    """Validate the shared selector arguments; return m clipped to the number of rows."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(getattr(features, "shape", ()))
        raise ValueError(f"features must be a 2-D torch.Tensor (n, d), got shape {shape}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"m must be a non-negative int, got {m!r}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite (found NaN or inf)")
    return min(m, features.shape[0])


def _normalised(features: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    return F.normalize(features.detach().to(dtype), dim=1)


def herding_order(features: torch.Tensor, m: int) -> torch.Tensor:
    """Exact iCaRL herding on L2-normalised rows; the m picks (clipped to n) in pick order.

    Step k scores all candidates at once from the running sum S of the chosen rows:
    k * ||mu - (S + phi(x)) / k|| = ||t - phi(x)|| with t = k*mu - S, and ||t - phi||^2 =
    ||phi||^2 - 2 phi.t + const, so one matrix-vector product ranks them (chosen rows masked
    with +inf). O(n*d) per step, O(n*m*d) in all, no (n, d) temporaries; stays on the tensor's
    device without a host sync per step; ties go to the lowest index.
    """
    m = _check(features, m)
    phi = _normalised(features)
    n, device = phi.shape[0], phi.device
    mu = phi.mean(dim=0)
    sq_norms = (phi * phi).sum(dim=1)  # 1, or 0 for an all-zero row
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    order = torch.empty(m, dtype=torch.long, device=device)
    for k in range(1, m + 1):
        score = torch.addmv(sq_norms, phi, k * mu - running, alpha=-2.0)
        pick = torch.argmin(score.masked_fill_(taken, math.inf)).view(1)  # lowest index on ties
        order[k - 1] = pick[0]
        taken.index_fill_(0, pick, True)
        running += phi.index_select(0, pick)[0]
    return order


def herding_order_reference(features: torch.Tensor, m: int) -> torch.Tensor:
    """Step-by-step float64 loop over candidates: the ground truth for tests and benchmarks."""
    m = _check(features, m)
    x = features.detach().cpu().double().numpy()
    phi = [row / max(float(np.linalg.norm(row)), 1e-12) for row in x]
    mu = sum(phi) / len(phi) if phi else None
    running = np.zeros(x.shape[1])
    chosen: list[int] = []
    for k in range(1, m + 1):
        best, best_dist = -1, math.inf
        for i, row in enumerate(phi):
            if i in chosen:
                continue
            dist = float(np.linalg.norm(mu - (running + row) / k))
            if dist < best_dist:  # strict: the lowest index keeps a tie
                best, best_dist = i, dist
        chosen.append(best)
        running = running + phi[best]
    return torch.tensor(chosen, dtype=torch.long)


def rank_all_order(features: torch.Tensor, m: int) -> torch.Tensor:
    """Benchmark baseline: same picks, but every step re-ranks each candidate from scratch.

    Each step materialises chosen set + candidate for every candidate and takes its mean, so
    step k costs O(n*k*d) time and memory. Use it on small n only.
    """
    m = _check(features, m)
    phi = _normalised(features)
    mu = phi.mean(dim=0)
    chosen: list[int] = []
    for _ in range(m):
        rest = [i for i in range(phi.shape[0]) if i not in chosen]
        cand = phi[rest].unsqueeze(1)  # (r, 1, d)
        old = phi[chosen].unsqueeze(0).expand(len(rest), -1, -1)  # (r, k-1, d)
        dist = (mu - torch.cat([old, cand], dim=1).mean(dim=1)).norm(dim=1)
        chosen.append(rest[int(torch.argmin(dist))])
    return torch.tensor(chosen, dtype=torch.long, device=phi.device)


class Selector(Protocol):
    """Rank rows of (n, d) features; any prefix of the ranking is a valid smaller selection."""

    def __call__(self, features: torch.Tensor, m: int, seed: int) -> torch.Tensor: ...


def random_order(features: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """The first m of a seeded permutation: select(x, m1) == select(x, m2)[:m1] for one seed."""
    m = _check(features, m)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(features.shape[0], generator=gen)[:m]


def reservoir_order(features: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """Algorithm R (Vitter 1985) with m slots over the stream order 0..n-1, then a seeded shuffle.

    The reservoir is a uniform m-subset; the shuffle makes every prefix a uniform subset too
    (slot order is not: slot j can only hold item j or items >= m), which is what shrink needs.
    Unlike herding and random, select(x, m1) is not exactly select(x, m2)[:m1].
    """
    m = _check(features, m)
    gen = torch.Generator().manual_seed(seed)
    draws = torch.rand(features.shape[0], generator=gen, dtype=torch.float64).tolist()
    slots = list(range(m))
    for i in range(m, len(draws)):
        j = min(int(draws[i] * (i + 1)), i)  # uniform in [0, i]
        if j < m:
            slots[j] = i
    return torch.tensor(slots, dtype=torch.long)[torch.randperm(m, generator=gen)]


SELECTORS: dict[str, Selector] = {
    "herding": lambda features, m, seed: herding_order(features, m),  # deterministic, no seed
    "random": random_order,
    "reservoir": reservoir_order,
}


def select(strategy: str, features: torch.Tensor, m: int, seed: int = 0) -> torch.Tensor:
    """Rank up to m rows with the named strategy; a CPU LongTensor of row indices."""
    return _selector(strategy)(features, m, seed).cpu()


def _selector(strategy: str) -> Selector:
    if strategy not in SELECTORS:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    return SELECTORS[strategy]


def split_budget(total: int, groups: Sequence[Hashable]) -> dict[Hashable, int]:
    """Split K evenly over the distinct groups; the remainder goes to the first in sorted order.

    Each group gets floor(K/G) or floor(K/G)+1 and the values sum to K. A group holding fewer
    items than its share leaves the slack unused. No groups: an empty dict.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative int (the replay budget K), got {total!r}")
    unique = list(dict.fromkeys(groups))
    try:
        unique.sort()  # type: ignore[call-arg]
    except TypeError:  # mixed types: any fixed order will do
        unique.sort(key=repr)
    if not unique:
        return {}
    base, extra = divmod(total, len(unique))
    return {g: base + (1 if r < extra else 0) for r, g in enumerate(unique)}


def _check_group(group: Any) -> Group:
    if (not isinstance(group, tuple) or len(group) != 2
            or not all(isinstance(part, str) for part in group) or "|" in group[0]):
        raise ValueError(f"group must be a (domain, label) tuple of str, domain without '|'; "
                         f"got {group!r}")
    return group


def _jsonable(item: Any) -> Any:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return item


@dataclass
class ReplayBuffer:
    """Exemplars per (domain, label) group, each list in selection order (prefix = smaller buffer)."""

    groups: dict[Group, list[Any]] = field(default_factory=dict)

    def add_group(self, group: Group, ordered_items: Sequence[Any]) -> None:
        self.groups[_check_group(group)] = list(ordered_items)

    def shrink(self, budget: Mapping[Group, int]) -> "ReplayBuffer":
        """Truncate every group to its budget's prefix (in place); every group needs a budget."""
        missing = [g for g in self.groups if g not in budget]
        if missing:
            raise ValueError(f"budget has no entry for groups {missing}")
        for group, items in self.groups.items():
            size = budget[group]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"budget[{group!r}] must be a non-negative int, got {size!r}")
            del items[size:]
        return self

    def items(self) -> list[Any]:
        return [item for items in self.groups.values() for item in items]

    def sizes(self) -> dict[Group, int]:
        return {group: len(items) for group, items in self.groups.items()}

    def to_json(self) -> dict[str, Any]:
        """Dataclass items become dicts; other items must already be JSON-serialisable."""
        return {"format": BUFFER_FORMAT,
                "groups": {f"{d}|{label}": [_jsonable(x) for x in items]
                           for (d, label), items in self.groups.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> "ReplayBuffer":
        if not isinstance(obj, dict) or obj.get("format") != BUFFER_FORMAT:
            raise ValueError(f"expected an object with format {BUFFER_FORMAT}")
        groups = obj.get("groups")
        if not isinstance(groups, dict):
            raise ValueError("'groups' must be an object keyed by 'domain|label'")
        buffer = cls()
        for key, items in groups.items():
            if "|" not in key or not isinstance(items, list):
                raise ValueError(f"group {key!r}: key must be 'domain|label', value a list")
            domain, label = key.split("|", 1)
            buffer.add_group((domain, label), items)
        return buffer

    def save(self, path: str | Path) -> None:
        """Atomic: a temp file beside `path`, fsync, os.replace."""
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "ReplayBuffer":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReplayBufferError(f"{path}: not a valid replay buffer JSON file: {e}") from e
        try:
            return cls.from_json(obj)
        except ValueError as e:
            raise ReplayBufferError(f"{path}: not a valid replay buffer: {e}") from e


def _group_seed(seed: int, group: Group) -> int:
    """A per-group seed that is stable across processes (str hash() is salted)."""
    return (seed * 1_000_003 + zlib.crc32("|".join(group).encode())) % 2**63


def _pick(items: Sequence[Any], features: torch.Tensor, m: int, strategy: str, seed: int,
          group: Group) -> list[Any]:
    if not isinstance(features, torch.Tensor) or features.shape[0] != len(items):
        rows = getattr(features, "shape", ("?",))[0]
        raise ValueError(f"group {group!r}: {len(items)} items but {rows} feature rows")
    return [items[i] for i in select(strategy, features, m, _group_seed(seed, group)).tolist()]


def update_buffer(buffer: ReplayBuffer,
                  new_groups: Mapping[Group, tuple[Sequence[Any], torch.Tensor]],
                  total: int, strategy: str = "herding", seed: int = 0,
                  regroup_features: Mapping[Group, torch.Tensor] | None = None) -> ReplayBuffer:
    """A new buffer: budget K split over old + new groups; the input buffer is left unchanged.

    Old groups keep their prefix, or are re-selected from their current exemplars when
    regroup_features gives new-model features for them (rows in the group's item order).
    New groups are selected with `strategy`; a new group already in the buffer replaces it
    (pass its old exemplars among the items if they should compete).
    """
    _selector(strategy)
    regroup = dict(regroup_features or {})
    unknown = [g for g in regroup if g not in buffer.groups]
    if unknown:
        raise ValueError(f"regroup_features names groups not in the buffer: {unknown}")
    budget = split_budget(total, [*buffer.groups, *new_groups])
    out = ReplayBuffer()
    for group, items in buffer.groups.items():
        if group in new_groups:
            continue
        if group in regroup:
            out.add_group(group, _pick(items, regroup[group], budget[group], strategy, seed, group))
        else:
            out.add_group(group, items[: budget[group]])
    for group, (items, features) in new_groups.items():
        out.add_group(group, _pick(list(items), features, budget[group], strategy, seed, group))
    return out
