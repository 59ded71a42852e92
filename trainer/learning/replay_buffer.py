"""The model's own features for replay: mean-pooled, L2-normalised embeddings, and the buffer they herd.

Herding must use the features of the model that will serve next (DESIGN.md, Herding), so a
run dir's replay buffer is always (re)built right after that run's weights are final.
"""

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from trainer.common.errors import ReplayBufferError
from trainer.data.reference import embed
from trainer.data.sources import Example
from trainer.learning.herding import ReplayBuffer, update_buffer

BUFFER_FILE = "replay_buffer.json"


def embeddings(model: Any, tokenizer: Any, texts: Sequence[str],
               max_length: int = 128) -> torch.Tensor:
    """(n, d) float32: the served L2-normalised mean-pooled embeddings (trainer.data.reference.embed),
    computed in length order so batches carry little padding, returned in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    if not order:
        return torch.empty(0, 0)
    pooled = torch.from_numpy(embed(model, tokenizer, [texts[i] for i in order], max_length)[1])
    out = torch.empty_like(pooled)
    out[order] = pooled
    return out


def by_group(examples: Sequence[Example]) -> dict[tuple[str, str], list[Example]]:
    """(domain, label) -> examples, groups in sorted order, examples in input order."""
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for ex in examples:
        groups[(ex.domain, ex.label)].append(ex)
    return dict(sorted(groups.items()))


def grow_buffer(model: Any, tokenizer: Any, buffer: ReplayBuffer, new: Sequence[Example],
                total: int, strategy: str, seed: int, max_length: int = 128,
                reherd: bool = False) -> ReplayBuffer:
    """Budget `total` over old + new groups: old groups keep their prefix (or are re-selected
    with this model's features when `reherd`), new groups are selected from `new`."""
    def feats(items: Sequence[Example]) -> torch.Tensor:
        return embeddings(model, tokenizer, [ex.text for ex in items], max_length=max_length)

    new_groups = {g: (items, feats(items)) for g, items in by_group(new).items()}
    regroup = ({g: feats(items) for g, items in buffer.groups.items()
                if g not in new_groups and items} if reherd else None)
    return update_buffer(buffer, new_groups, total, strategy, seed, regroup)


def buffer_bytes(buffer: ReplayBuffer) -> bytes:
    """The file save_run writes into the run dir (covered by its manifest)."""
    return (json.dumps(buffer.to_json(), indent=2, sort_keys=True) + "\n").encode()


def read_buffer(run_dir: Path) -> ReplayBuffer:
    """The run's buffer with Example items; an empty buffer for runs made without one."""
    path = Path(run_dir) / BUFFER_FILE
    if not path.is_file():
        return ReplayBuffer()
    raw = ReplayBuffer.load(path)
    buffer = ReplayBuffer()
    for group, items in raw.groups.items():
        try:
            buffer.add_group(group, [Example(**item) for item in items])
        except TypeError as e:
            raise ReplayBufferError(f"{path}: group {group!r} holds an item that is not "
                                    f"an object with text, label, domain: {e}") from e
    return buffer


def sizes_json(buffer: ReplayBuffer) -> Mapping[str, int]:
    return {f"{d}|{label}": n for (d, label), n in buffer.sizes().items()}
