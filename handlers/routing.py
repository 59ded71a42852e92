"""Domain experts: each served domain keeps the version that learnt it, and a text router sends
each text to its domain's version, so an adaptation changes the answers of the new domain and
leaves the old domains' answers as they were (up to the router's mistakes).

Why: a LoRA step that gains on a new domain moves the shared decision boundary and changes 6-10 %
of an old domain's answers, most of them near the boundary, and no distillation recipe kept
those without giving back the gain. Routing keeps both: old domains answer exactly as before
wherever the router recognises them, so the rollout gate can prove "no worse" from the share of
changed answers alone.

The router is a linear model over hashed token-id unigrams and bigrams of the same tokenized
batch the experts read: no second tokenizer, one sparse dot product per text, and a batch costs
one forward pass in total (each expert runs on its own rows only).
"""

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from handlers.errors import ConfigError

ROUTER_FILE = "router.json"
ROUTER_WEIGHTS = "router.npy"
NEWEST = "model.safetensors"  # the expert a run dir trained itself
DIMS = 1 << 18
_BIGRAM = 1_000_003  # a prime multiplier that spreads (a, b) pairs over the hashed space


def hashed_features(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    dims: int = DIMS) -> list[np.ndarray]:
    """Per row: the distinct hashed indexes of its token ids and adjacent id pairs."""
    out = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        ids = [i for i, m in zip(ids, mask) if m]
        grams = [i % dims for i in ids] + [(a * _BIGRAM + b) % dims for a, b in zip(ids, ids[1:])]
        out.append(np.unique(np.asarray(grams, dtype=np.int64)))
    return out


def own_width(attention_mask: torch.Tensor, rows: Any) -> int:
    """The padded width `rows` need on their own (the batch's width when the tokenizer pads on
    the left), so each expert pays for its own rows' padding only."""
    width = int(attention_mask[rows].sum(dim=1).max())
    return attention_mask.shape[1] if attention_mask[rows, width:].any() else width


@dataclass
class Router:
    """Softmax regression over served domains on L2-normalised binary hashed features."""

    domains: list[str]
    experts: dict[str, str]  # domain -> weights file of the version that answers it
    weights: np.ndarray  # (dims, domains)
    bias: np.ndarray  # (domains,)

    def __post_init__(self) -> None:
        k = len(self.domains)
        if self.weights.ndim != 2 or self.weights.shape[1] != k or self.bias.shape != (k,):
            raise ConfigError(f"router: weights {self.weights.shape} and bias {self.bias.shape} "
                              f"do not fit {k} domains")
        missing = [d for d in self.domains if d not in self.experts]
        if missing:
            raise ConfigError(f"router: no expert named for domain(s) {missing}")

    @property
    def dims(self) -> int:
        return int(self.weights.shape[0])

    def scores(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """(n, domains) logits."""
        out = np.empty((len(rows), len(self.domains)), dtype=np.float32)
        for i, idx in enumerate(rows):
            out[i] = self.weights[idx].sum(axis=0) / max(1.0, np.sqrt(len(idx))) + self.bias
        return out

    def domain_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        best = self.scores(hashed_features(input_ids, attention_mask, self.dims)).argmax(axis=1)
        return [self.domains[i] for i in best]

    def to_files(self) -> dict[str, bytes]:
        """The two files, as bytes for a run dir's writer."""
        import io

        buf = io.BytesIO()
        np.save(buf, np.vstack([self.weights, self.bias[None, :]]).astype(np.float32))
        meta = {"domains": self.domains, "experts": self.experts, "dims": self.dims}
        return {ROUTER_FILE: (json.dumps(meta, indent=1) + "\n").encode(),
                ROUTER_WEIGHTS: buf.getvalue()}

    @classmethod
    def load(cls, directory: Path) -> "Router":
        directory = Path(directory)
        try:
            meta = json.loads((directory / ROUTER_FILE).read_text())
            table = np.load(directory / ROUTER_WEIGHTS, allow_pickle=False)
            domains, experts = list(meta["domains"]), dict(meta["experts"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{directory}: unreadable router ({e})") from e
        if table.ndim != 2 or table.shape[0] != int(meta.get("dims", -1)) + 1:
            raise ConfigError(f"{directory / ROUTER_WEIGHTS}: shape {table.shape} does not match "
                              f"dims {meta.get('dims')}")
        for name in set(experts.values()):
            if "/" in name or "\\" in name or not name.endswith(".safetensors"):
                raise ConfigError(f"router: expert {name!r} must be a .safetensors file name")
        return cls(domains, experts, table[:-1], table[-1])


class RoutedClassifier(torch.nn.Module):
    """Several sequence classifiers with one head layout behind one forward: each row of the
    batch is answered by the expert of its routed domain."""

    def __init__(self, experts: Mapping[str, torch.nn.Module], router: Router) -> None:
        super().__init__()
        self.names = list(experts)
        self.experts = torch.nn.ModuleList(experts.values())
        self.router = router
        self.index = {name: i for i, name in enumerate(self.names)}
        self.config = self.experts[self.index[NEWEST]].config
        self.last_routes: list[str] = []  # each row's domain in the latest batch
        self.eval()  # answers only: never trained as one (a caller restoring train mode would
        # otherwise switch every expert's dropout on)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False, **kwargs: Any) -> SequenceClassifierOutput:
        domains = self.router.domain_of(input_ids, attention_mask)
        self.last_routes = domains
        owner = torch.tensor([self.index[self.router.experts[d]] for d in domains])
        logits, hidden = None, None
        for e in owner.unique().tolist():
            rows = (owner == e).nonzero().squeeze(1).to(input_ids.device)
            width = own_width(attention_mask, rows)
            part = {k: (v[rows, :width] if v.dim() == 2 else v[rows])
                    if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            out = self.experts[e](input_ids=input_ids[rows, :width],
                                  attention_mask=attention_mask[rows, :width],
                                  output_hidden_states=output_hidden_states, **part)
            if logits is None:
                logits = out.logits.new_empty((len(domains), out.logits.shape[1]))
                if output_hidden_states:  # zeros where a row's part was shorter: padding
                    hidden = [h.new_zeros((len(domains), input_ids.shape[1], *h.shape[2:]))
                              for h in out.hidden_states]
            logits[rows] = out.logits
            if output_hidden_states:
                for whole, h in zip(hidden, out.hidden_states):
                    whole[rows, :width] = h
        return SequenceClassifierOutput(logits=logits, hidden_states=tuple(hidden)
                                        if hidden is not None else None)


def load_expert(newest: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str
                ) -> torch.nn.Module:
    """Another version's weights in `newest`'s architecture, dtype and device."""
    expert = type(newest)(copy.deepcopy(newest.config))  # building may set config fields
    missing, unexpected = expert.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ConfigError(f"{name}: not the same architecture as the newest expert "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    p = next(newest.parameters())
    return expert.to(device=p.device, dtype=p.dtype).eval()


def with_experts(model_dir: Path, newest: torch.nn.Module) -> torch.nn.Module:
    """`newest` alone, or behind its run dir's router with the other experts loaded beside it
    (the manifest was verified by the caller)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / ROUTER_FILE).is_file():
        return newest
    router = Router.load(model_dir)
    experts: dict[str, torch.nn.Module] = {NEWEST: newest}
    for name in dict.fromkeys(router.experts.values()):
        path = model_dir / name
        if name in experts:
            continue
        if not path.is_file():
            raise ConfigError(f"{model_dir}: router names expert {name}, which is missing")
        experts[name] = load_expert(newest, load_file(str(path)), str(path))
    return RoutedClassifier(experts, router)
