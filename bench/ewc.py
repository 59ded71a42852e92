"""EWC (Kirkpatrick et al. 2017) for LoRA steps: the continual benchmark's row 4.

Each LoRA step starts a fresh adapter on the merged model, so the Fisher information is kept
in the space of the weights the adapter moves (the targeted projections and the head):
the penalty is lambda/2 * sum F * dW^2, where dW is the adapter's merged update. F is the
diagonal empirical Fisher (squared per-example gradients of the true label's log-likelihood),
computed on each domain's training data right after it is learnt and summed over domains
(online EWC); no old data is kept, as in the paper.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from trainer.data.sources import Example
from trainer.model.lora import resolve_target_modules

HEAD = "classifier"


def anchored_names(model: Any, target_modules: Sequence[str]) -> list[str]:
    """Parameter names (of the merged model) a LoRA step changes: targeted weights and the head."""
    suffixes = tuple(resolve_target_modules(model, target_modules))
    names = [f"{name}.weight" for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in suffixes]
    return names + [n for n, _ in model.named_parameters() if n.startswith(f"{HEAD}.")]


def fisher(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str],
           names: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    was = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in names)
    model.eval()  # no dropout: the Fisher of the model as served
    index = {label: i for i, label in enumerate(labels)}
    total = {n: torch.zeros_like(params[n]) for n in names}
    for ex in examples:
        batch = tokenizer([ex.text], truncation=True, max_length=max_length, return_tensors="pt")
        loss = F.cross_entropy(model(**batch).logits, torch.tensor([index[ex.label]]))
        for n, g in zip(names, torch.autograd.grad(loss, [params[n] for n in names])):
            total[n] += g.detach() ** 2
    for n, p in params.items():
        p.requires_grad_(was[n])
    return {n: t / max(1, len(examples)) for n, t in total.items()}


def add(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: a[n] + b[n] for n in a}


def penalty(peft_model: Any, fisher_sum: dict[str, torch.Tensor], lam: float
            ) -> Callable[[], torch.Tensor]:
    """lambda/2 * sum F * dW^2 over the merged update of `peft_model`, a fresh LoRA wrapper
    (call before training: the head's starting values are the anchor)."""
    inner = peft_model.base_model.model
    head = inner.get_submodule(HEAD)
    head = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
    deltas: list[tuple[str, Callable[[], torch.Tensor]]] = []
    for name in fisher_sum:
        module_name, param_name = name.rsplit(".", 1)
        if module_name == HEAD:
            param = getattr(head, param_name)
            start = param.detach().clone()
            deltas.append((name, lambda p=param, s=start: p - s))
        else:
            module = inner.get_submodule(module_name)
            deltas.append((name, lambda m=module: m.get_delta_weight("default")))

    def value() -> torch.Tensor:
        return 0.5 * lam * sum((fisher_sum[n] * delta() ** 2).sum() for n, delta in deltas)
    return value
