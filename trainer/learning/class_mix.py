"""Replay that keeps each old domain's class mix.

The replay buffer holds about as many exemplars of every (domain, class) group, so herding keeps
the rare classes. Trained on with equal weight, those exemplars teach an old domain a class mix
it was never learnt with: a domain learnt 40 % neutral (its class counts times its class weights)
replays 33 % neutral, and the adapted version answers neutral less on that domain, which shows
as right-to-wrong flips of its majority class. So each replay row is scaled so that, within its
domain, every class carries the share of the loss it carried when the domain was learnt
(`learnt_mix`, kept in every run dir's report); a domain's replay rows keep their total weight.
"""

from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from trainer.data.sources import Example

Mix = dict[str, dict[str, float]]  # domain -> label -> share of that domain's training loss


def per_label(labels: Sequence[str],
              class_weights: torch.Tensor | Sequence[float] | None) -> dict[str, float]:
    return {label: 1.0 if class_weights is None else float(class_weights[i])
            for i, label in enumerate(labels)}


def learnt_mix(examples: Sequence[Example], labels: Sequence[str],
               class_weights: torch.Tensor | Sequence[float] | None) -> Mix:
    """Per domain, each class's share of the loss it was trained with: count x class weight."""
    weight = per_label(labels, class_weights)
    counts = Counter((ex.domain, ex.label) for ex in examples if ex.label is not None)
    mix: Mix = {}
    for domain in sorted({d for d, _ in counts}):
        mass = {label: counts[(domain, label)] * weight[label] for label in labels}
        total = sum(mass.values())
        mix[domain] = {label: round(m / total, 6) for label, m in mass.items()}
    return mix


def replay_scale(rows: Sequence[Example], n_replay: int, mix: Mapping[str, Mapping[str, float]],
                 labels: Sequence[str],
                 class_weights: torch.Tensor | Sequence[float] | None) -> list[float]:
    """A loss multiplier per row (the first n_replay rows are the replay exemplars; the others
    get 1), applied on top of the step's class weights: within each old domain in `mix`, class
    c's replay rows then carry mix[c] of the domain's replay weight. Domains without a mix, and
    classes the buffer does not hold, are left as they are."""
    weight = per_label(labels, class_weights)
    replay = rows[:n_replay]
    held = Counter((ex.domain, ex.label) for ex in replay)
    factor: dict[tuple[str, str], float] = {}
    for domain in {d for d, _ in held}:
        if domain not in mix:
            continue
        groups = [(label, n) for (d, label), n in held.items() if d == domain]
        mass = sum(n * weight[label] for label, n in groups)
        share = sum(mix[domain].get(label, 0.0) for label, _ in groups)
        if share <= 0:
            continue
        for label, n in groups:
            target = mix[domain].get(label, 0.0) / share * mass
            factor[(domain, label)] = target / (n * weight[label])
    return [factor.get((ex.domain, ex.label), 1.0) if i < n_replay else 1.0
            for i, ex in enumerate(rows)]


def describe(mix: Mapping[str, Mapping[str, float]]) -> str:
    return "; ".join(f"{d} " + ", ".join(f"{label} {100 * s:.0f} %" for label, s in m.items())
                     for d, m in mix.items())
