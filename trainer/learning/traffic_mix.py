"""The new domain's class mix, read off its unlabelled traffic (`adapt --traffic-mix`).

A version answers with the class mix it was trained with: class weights and K labelled texts
per class teach it that every class is about equally common, while a new domain's traffic
rarely is (movie reviews are almost never neutral). A few labels cannot tell the mix: drawn K
per class, they are balanced by construction. The unlabelled texts can: Saerens et al.'s EM
(Neural Computation 2002) finds the mix q under which the model's answers, rescaled by
q / learnt mix, average to q; adding log(q / learnt mix) to the output bias then makes the new
version answer with that mix. The learnt mix is the new domain's share of the training loss per
class (class counts times class weights, `class_mix.learnt_mix`), which is the prior the
model's probabilities carry. Measured: on the continual stream it moved the final average
within the seed spread (row 11 of bench/results/continual-few-shot.md), so it is opt-in; what
the true mix would be worth, and how other estimators fare, in bench/results/label-shift.md.
"""

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainer.model.lora import classification_head

SMOOTHING = 1.0  # add-one (Dirichlet) counts: a class EM empties keeps a finite log-share
MAX_STEPS, TOLERANCE = 1000, 1e-7


def em_mix(probs: torch.Tensor, learnt: torch.Tensor) -> torch.Tensor:
    """The class mix of the texts behind `probs` (rows: p(y|x) under `learnt`), by EM."""
    q = learnt.clone()
    n, k = probs.shape
    for _ in range(MAX_STEPS):
        w = probs * (q / learnt)
        new = ((w / w.sum(1, keepdim=True)).sum(0) + SMOOTHING) / (n + k * SMOOTHING)
        if float((new - q).abs().max()) < TOLERANCE:
            return new
        q = new
    return q


def output_bias(model: Any) -> torch.Tensor | None:
    """The bias of the head's last Linear (BERT's classifier, RoBERTa's out_proj, a score)."""
    head = classification_head(model)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if head else []
    return linears[-1].bias if linears and linears[-1].bias is not None else None


def shift_to_traffic(model: Any, logits: torch.Tensor, labels: Sequence[str],
                     learnt: Mapping[str, float], apply: bool = True) -> dict[str, Any]:
    """Estimate the traffic's mix from the model's `logits` on its unlabelled texts and, if
    `apply`, move the output bias by log(estimate / learnt), in place. Only a version that
    answers its own domain alone (a routed expert) should be moved: one model answering every
    domain would answer the old ones with the new domain's mix. Returns what the report keeps."""
    prior = torch.tensor([max(learnt.get(label, 0.0), 1e-6) for label in labels])
    prior = prior / prior.sum()
    q = em_mix(torch.softmax(logits.float(), dim=-1), prior)
    shift = (q / prior).log()
    bias = output_bias(model) if apply else None
    if bias is not None:
        with torch.no_grad():
            bias += shift.to(bias.dtype).to(bias.device)
    outcome = ("output bias shifted to it" if bias is not None else
               "reported only: this version answers every domain" if not apply else
               f"reported only: {type(model).__name__} has no output bias to shift")
    fmt = ", ".join(f"{label} {100 * float(p):.0f} -> {100 * float(e):.0f} %"
                    for label, p, e in zip(labels, prior, q))
    print(f"class mix of the unlabelled traffic (EM over {len(logits)} texts), learnt -> "
          f"estimated: {fmt}; {outcome}", file=sys.stderr)
    return {"texts": len(logits), "applied": bias is not None,
            "learnt": {label: round(float(p), 6) for label, p in zip(labels, prior)},
            "estimated": {label: round(float(e), 6) for label, e in zip(labels, q)},
            "bias_shift": {label: round(float(d), 4) for label, d in zip(labels, shift)}}
