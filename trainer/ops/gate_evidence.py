"""What the rollout gate judges on, and its rules as lines a person reads.

Domains: every domain the current default serves (its archive's lineage) and every domain in the
candidate's lineage. The candidate's newest domain must improve; every other is an old domain
that may lose at most the margin, whatever the candidate's own lineage says.

Texts per domain: the labelled test split (capped at --holdout) and the unlabelled held-out texts
both archives carry for the drift reference. A candidate trained to agree with its parent on half
of them (`adapt --distill-held-out`), or whose router learnt from that half (`adapt --route`),
is judged on the other half only (`trainer.data.reference_texts.distil_half`), so its training never
biases the evidence.

Traffic the default served before the drift (`rollout --traffic FILE`, e.g. from `trainer sample
--select before-drift`) is more unlabelled text of what already worked: when the default serves
one old domain it joins that domain's texts; when it serves several, it is judged as one more
old "domain", `traffic before the drift`. More texts narrow the disagreement evidence's bounds:
a held-out set of a few hundred texts cannot bound a 2-point loss when a candidate changes 9 %
of its answers, whatever the labels say.

Both versions answer all of them through their versioned URLs. An old domain with unlabelled
texts is decided on disagreement evidence (trainer.ops.gate): first on the share alone; if that
cannot settle it, the labeller is asked for labels on held-out texts where the versions
disagree (at most --max-labels, picked at random), and the rule is decided on the share's
bound and the labelled estimate's together, each at half the error rate, so asking after the
first look keeps the confidence. A domain without unlabelled texts falls back to the paired
test on its labelled split.
"""

import json
import random
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer.common.errors import DataError, RolloutError
from trainer.data.lineage import test_splits
from trainer.data.reference_texts import REFERENCE_TEXTS_FILE, distil_half
from trainer.data.sources import Example, read_texts
from trainer.model.churn import churn
from trainer.ops.gate import (
    FAIL,
    INCONCLUSIVE,
    MIN_LABELLED,
    PASS,
    Disagreement,
    better,
    disagreement,
    needed,
    not_worse,
    not_worse_by_disagreement,
    paired,
    texts_for_counts,
    texts_to_settle,
    verdict,
)
from trainer.ops.holdout import ask_all
from trainer.ops.latency import median_p95_ms

# (domain, texts) -> {text: label} for the texts it can label; the loop's labeller, or a file.
Labeller = Callable[[str, list[str]], dict[str, str]]


@dataclass
class Holdout:
    labelled: list[Example]
    unlabelled: list[str]


@dataclass
class Answers:
    """Both versions' answers on one domain: the labelled texts first, then the unlabelled."""
    texts: list[str]
    truth: list[str | None]  # None: no label (yet)
    old: list[str | None]  # None: the request failed
    new: list[str | None]
    old_ms: list[float]
    new_ms: list[float]
    labelled_part: int
    asked: list[int] = field(default_factory=list)  # indexes the labeller was asked for
    answered: int = 0


def archive_report(mar: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The training report and the held-out reference texts an archive carries."""
    try:
        with zipfile.ZipFile(mar) as z:
            report = json.loads(z.read("report.json"))
            texts = (json.loads(z.read(REFERENCE_TEXTS_FILE))
                     if REFERENCE_TEXTS_FILE in z.namelist() else {})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise RolloutError(f"{mar}: not a usable model archive ({e})") from e
    return report, texts


def lineage(report: dict[str, Any]) -> list[str]:
    """Domains a version was trained on, oldest first."""
    return list(report.get("domains_seen") or report.get("domains")
                or report.get("domain_sources") or [])


def new_domain_of(report: dict[str, Any]) -> str:
    return report.get("domain") or lineage(report)[-1]


def labelled_splits(report: dict[str, Any], domains: Sequence[str], size: int
                    ) -> tuple[dict[str, list[Example]], dict[str, str]]:
    """Each domain's test split as the report's lineage records it; the domains it cannot
    rebuild, with the reason."""
    sources = report.get("domain_sources") or {}
    found, missing = {}, {}
    for d in domains:
        if d not in sources:
            missing[d] = "its lineage records no test split"
            continue
        try:
            found[d] = test_splits({d: sources[d]}, report["labels"])[d][:size]
        except (DataError, OSError) as e:
            missing[d] = str(e)
    return found, missing


def gate_holdouts(candidate: Path, default: Path | None, size: int,
                  traffic: Sequence[str] = ()) -> tuple[str, dict[str, Holdout], list[str]]:
    """(new domain, holdout per domain with the new domain last, notes). Refuses a domain of
    either version for which neither labelled nor unlabelled texts can be found. `traffic`:
    see add_traffic."""
    report, texts = archive_report(candidate)
    new = new_domain_of(report)
    reports = [(report, texts)]
    if default is not None:
        reports.append(archive_report(default))
    # a candidate distilled on half the held-out texts, or a version routing by a router that
    # learnt from that half, is judged on the other half only
    half_seen = (bool((report.get("distillation") or {}).get("unlabelled_rows"))
                 or any(r.get("routing") for r, _ in reports))
    domains = list(dict.fromkeys(d for r, _ in reports for d in lineage(r)))
    domains = [d for d in domains if d != new] + [new]
    notes, out = [], {}
    labelled, missing = labelled_splits(report, domains, size)
    if default is not None and missing:
        more, missing = labelled_splits(reports[1][0], list(missing), size)
        labelled.update(more)
    for d in domains:
        seen, unlabelled = {ex.text for ex in labelled.get(d, [])}, []
        for _, t in reports:
            for text in t.get(d, []) if d != new else []:
                if text not in seen and not (half_seen and distil_half(text)):
                    seen.add(text)
                    unlabelled.append(text)
        if d not in labelled and not unlabelled:
            raise RolloutError(f"the gate has no texts of domain {d!r} (served by "
                               f"{'the default' if d not in lineage(report) else 'the candidate'}"
                               f"): {missing.get(d, 'no test split')}, and neither archive "
                               f"carries held-out texts of it; refusing to judge without it")
        if d not in labelled:
            notes.append(f"{d}: no labelled test split ({missing.get(d)}); judged on its "
                         f"{len(unlabelled)} held-out texts")
        elif d != new and not unlabelled:
            notes.append(f"{d}: neither archive carries held-out texts of it; the labelled "
                         "test decides")
        out[d] = Holdout(labelled.get(d, []), unlabelled)
    if not out[new].labelled:
        raise RolloutError(f"the candidate's new domain {new!r} has no labelled test split: "
                           f"{missing.get(new)}")
    if traffic:
        served = lineage(reports[-1][0]) if default is not None else domains
        out, note = add_traffic(out, new, served, traffic)
        notes.append(note)
    return new, out, notes


TRAFFIC = "traffic before the drift"


def add_traffic(held: dict[str, Holdout], new: str, served: Sequence[str],
                traffic: Sequence[str]) -> tuple[dict[str, Holdout], str]:
    """`traffic` joined to the one old domain the default serves, or judged as its own old
    "domain" when it serves several; the new domain stays last. Texts already held are kept
    once."""
    old = [d for d in served if d != new and d in held]
    target = old[0] if len(old) == 1 else TRAFFIC
    have = held.get(target, Holdout([], []))
    seen = {ex.text for ex in have.labelled} | set(have.unlabelled)
    extra = [t for t in dict.fromkeys(traffic) if t not in seen]
    out = {d: h for d, h in held.items() if d != new}
    out[target] = Holdout(have.labelled, have.unlabelled + extra)
    out[new] = held[new]
    note = (f"{target}: + {len(extra)} texts of the traffic served before the drift"
            if target != TRAFFIC else f"{len(extra)} texts of the traffic served before the "
            f"drift (the default serves {', '.join(old)}) judged as one more old domain")
    return out, note


def read_traffic(path: Path) -> list[str]:
    """The texts the default served before the drift (a `sample` file; labels are ignored)."""
    return read_texts(path, "--traffic")


def answer_all(client: Any, model: str, versions: tuple[str, str], held: dict[str, Holdout],
               concurrency: int) -> dict[str, Answers]:
    """Every text through both versions' URLs, interleaved in one pool so both see the same
    load (their latencies are compared)."""
    jobs = []
    for d, h in held.items():
        for text in [ex.text for ex in h.labelled] + h.unlabelled:
            jobs += [(d, versions[0], text), (d, versions[1], text)]
    got = ask_all(client, model, [(v, t) for _, v, t in jobs], concurrency)
    out, i = {}, 0
    for d, h in held.items():
        n = len(h.labelled) + len(h.unlabelled)
        part = got[i:i + 2 * n]
        i += 2 * n
        out[d] = Answers([ex.text for ex in h.labelled] + h.unlabelled,
                         [ex.label for ex in h.labelled] + [None] * len(h.unlabelled),
                         [a for a, _ in part[0::2]], [a for a, _ in part[1::2]],
                         [ms for _, ms in part[0::2]], [ms for _, ms in part[1::2]],
                         len(h.labelled))
    return out


def labels_complete(a: Answers) -> bool:
    """Every unlabelled-part disagreement is labelled, or stands in a random subset (`asked`)
    that is labelled whole. A labeller that answers only some of what it was asked (a labels
    file from an earlier round) answers a subset that is not random: weighting it up would
    bias the estimate, so such labels are not used until the rest are answered."""
    rest = [i for i in range(a.labelled_part, len(a.texts)) if a.old[i] != a.new[i]]
    return not rest or (bool(a.asked) and all(a.truth[i] is not None for i in a.asked))


def disagreement_of(a: Answers, confidence: float, with_labels: bool) -> Disagreement:
    """The labelled part's disagreements all carry labels (weight 1); of the unlabelled part's,
    the random subset the labeller answered whole stands for all of them (weight M / m), and the
    estimate is over every text. Without that (see labels_complete) the labelled part, itself a
    random sample of the domain, gives the estimate over its own texts; the share is always
    over every text."""
    dis = [i for i in range(len(a.texts)) if a.old[i] != a.new[i]]
    cleared = sum(a.truth[i] is not None and not (a.old[i] == a.truth[i] != a.new[i])
                  for i in dis)  # any label shows whether a disagreement is a negative flip
    diffs, weights = [], []
    if with_labels and labels_complete(a):
        rest = [i for i in dis if i >= a.labelled_part]
        answered = [i for i in rest if a.truth[i] is not None]
        for i in [i for i in dis if i < a.labelled_part] + answered:
            diffs.append(int(a.new[i] == a.truth[i]) - int(a.old[i] == a.truth[i]))
            weights.append(1.0 if i < a.labelled_part else len(rest) / len(answered))
    elif with_labels and a.labelled_part:
        whole = disagreement(len(a.texts), len(dis), [], [], confidence, cleared=cleared)
        part_dis = [i for i in dis if i < a.labelled_part]
        part = disagreement(a.labelled_part, len(part_dis),
                            [int(a.new[i] == a.truth[i]) - int(a.old[i] == a.truth[i])
                             for i in part_dis], [1.0] * len(part_dis), confidence)
        return replace(whole, labelled=part.labelled, change=part.change, sd=part.sd,
                       low=max(whole.low, part.low), high=min(whole.high, part.high))
    return disagreement(len(a.texts), len(dis), diffs, weights, confidence, cleared=cleared)


def ask_labeller(domain: str, a: Answers, labeller: Labeller | None, max_labels: int,
                 seed: int = 0) -> list[str]:
    """Labels for up to `max_labels` unlabelled disagreements (a seeded random pick); returns
    the texts still unlabelled, for a person to label."""
    todo = [i for i in range(len(a.texts)) if a.old[i] != a.new[i] and a.truth[i] is None]
    random.Random(seed).shuffle(todo)
    a.asked = todo[:max_labels]
    got = labeller(domain, [a.texts[i] for i in a.asked]) if labeller and a.asked else {}
    for i in a.asked:
        if got.get(a.texts[i]) is not None:
            a.truth[i] = got[a.texts[i]]
            a.answered += 1
    return [a.texts[i] for i in a.asked if a.truth[i] is None]


def scores(a: Answers) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each version's accuracy on the labelled test part (a failed request counts as wrong),
    errors and latency over every text it answered."""
    n = a.labelled_part
    out = []
    for answers, ms in ((a.old, a.old_ms), (a.new, a.new_ms)):
        correct = [answers[i] == a.truth[i] for i in range(n)]
        out.append({"n": n, "accuracy": round(sum(correct) / n, 4) if n else None,
                    "correct": correct,
                    "texts": len(a.texts), "errors": sum(x is None for x in answers),
                    **median_p95_ms(ms)})
    return out[0], out[1]


def domain_churn(a: Answers) -> dict[str, Any]:
    n = a.labelled_part
    out = {"test": churn(a.old[:n], a.new[:n], a.truth[:n]) if n else None}
    if len(a.texts) > n:
        out["unlabelled"] = churn(a.old[n:], a.new[n:])
    return out


def old_rule(domain: str, a: Answers, margin: float, confidence: float,
             labeller: Labeller | None, max_labels: int) -> tuple[str, str, list[str]]:
    """(outcome, line, texts still to label) for one old domain with unlabelled texts."""
    pct = f"{100 * confidence:g} %"
    first = disagreement_of(a, confidence, with_labels=False)
    to_label: list[str] = []
    if not_worse_by_disagreement(first, margin) == PASS:
        d, how = first, ("no labels needed" if not first.cleared else
                         "no labels needed beyond the test split's")
    else:
        to_label = ask_labeller(domain, a, labeller, max_labels)
        d = disagreement_of(a, confidence, with_labels=True)
        how = (f"{d.labelled} labelled disagreements ({d.labelled - a.answered} of the test "
               f"split, {a.answered} answered by the labeller of {len(a.asked)} asked): new "
               f"right on {_right(a, 'new')}, old right on {_right(a, 'old')}"
               + (f", estimated change {100 * d.change:+.1f} points" if d.change is not None
                  else f" (fewer than {MIN_LABELLED}: the counts alone decide)"))
        if not labels_complete(a):
            how = (f"{a.answered} of the {len(a.asked)} held-out disagreements asked were "
                   "labelled, not a random sample of them, so they are not used until the rest "
                   f"are: the test split's own {d.labelled} labelled disagreements decide, new "
                   f"right on {_right(a, 'new', a.labelled_part)}, old right on "
                   f"{_right(a, 'old', a.labelled_part)}"
                   + (f", estimated change {100 * d.change:+.1f} points"
                      if d.change is not None
                      else f" (fewer than {MIN_LABELLED}: the counts alone decide)"))
    outcome = not_worse_by_disagreement(d, margin)
    line = (f"{domain} (old): change >= {-100 * margin:+.1f} points; disagreement evidence: the "
            f"versions disagree on {d.disagree} of {d.texts} texts ({100 * d.share:.1f} %, at "
            f"most {100 * d.share_high:.1f} %), {d.cleared} of them labelled and not right -> "
            f"wrong, so at most {100 * d.flips_high:.1f} % right -> wrong; {how}; {pct} bounds on "
            f"the change [{100 * d.low:+.1f}, {100 * d.high:+.1f}] points")
    if outcome == INCONCLUSIVE:
        open_ = d.disagree - d.labelled
        n = (texts_to_settle(d, margin, confidence) if d.change is not None
             else texts_for_counts(d, margin, confidence))
        line += (f"; labels on the other {open_} disagreements may settle it (--max-labels, "
                 "--labels)" if open_ and (a.answered < len(a.asked) or len(a.asked) < open_)
                 else "; no realistic number of texts settles it (the estimate sits at or "
                 "below the bound)"
                 if n is None else f"; about {n} texts of this domain, their disagreements "
                 "labelled, would settle it")
    return outcome, line, to_label


def _right(a: Answers, which: str, upto: int | None = None) -> int:
    answers = a.new if which == "new" else a.old
    return sum(a.old[i] != a.new[i] and a.truth[i] is not None and answers[i] == a.truth[i]
               for i in range(len(a.texts) if upto is None else upto))


def paired_rule(domain: str, a: Answers, bound: float, is_new: bool, confidence: float
                ) -> tuple[str, str]:
    old, new = scores(a)
    p = paired(old["correct"], new["correct"], confidence)
    outcome = better(p, bound) if is_new else not_worse(p, -bound)
    what = (f"{domain} (new): gain > {100 * bound:+.1f} points" if is_new
            else f"{domain} (old): change >= {100 * bound:+.1f} points")
    line = (f"{what}; paired labelled test: measured {100 * p.diff:+.1f} ({100 * p.old:.1f} -> "
            f"{100 * p.new:.1f}) on {p.n} paired sentences, {100 * confidence:g} % bounds "
            f"[{100 * p.low:+.1f}, {100 * p.high:+.1f}]")
    if outcome == INCONCLUSIVE:
        n = needed(p, bound, confidence)
        line += ("; no holdout size settles it (the difference sits on the bound)" if n is None
                 else f"; about {n} labelled sentences would settle it (--holdout {n})")
    return outcome, line


def judge(answers: dict[str, Answers], new_domain: str, g: Any, labeller: Labeller | None
          ) -> dict[str, Any]:
    """Every rule with its outcome; `g` is the rollout's GateSettings."""
    rules: list[tuple[str, str]] = []
    to_label: dict[str, list[str]] = {}
    for d, a in answers.items():
        if d == new_domain:
            rules.append(paired_rule(d, a, g.min_new_gain, True, g.confidence))
        elif a.labelled_part < len(a.texts):
            outcome, line, left = old_rule(d, a, g.max_old_drop, g.confidence, labeller,
                                           g.max_labels)
            rules.append((outcome, line))
            if left and outcome == INCONCLUSIVE:
                to_label[d] = left
        else:
            rules.append(paired_rule(d, a, -g.max_old_drop, False, g.confidence))
    summaries = {d: scores(a) for d, a in answers.items()}
    total = sum(s["texts"] for _, s in summaries.values())
    error_rate = sum(s["errors"] for _, s in summaries.values()) / max(1, total)
    rules.append((PASS if error_rate <= g.max_error_rate else FAIL,
                  f"error rate {error_rate:.4f} <= {g.max_error_rate}"))
    p95_old = max(o["p95_ms"] for o, _ in summaries.values())
    p95_new = max(n["p95_ms"] for _, n in summaries.values())
    limit = g.p95_ratio * p95_old + g.p95_slack_ms
    rules.append((PASS if p95_new <= limit else FAIL,
                  f"p95 {p95_new:.1f} ms <= {g.p95_ratio} x default's {p95_old:.1f} ms + "
                  f"{g.p95_slack_ms} ms"))
    return {"outcome": verdict([o for o, _ in rules]),
            "rules": [f"{o} {text}" for o, text in rules],
            "old": {d: o for d, (o, _) in summaries.items()},
            "new": {d: n for d, (_, n) in summaries.items()},
            "churn": {d: domain_churn(a) for d, a in answers.items() if d != new_domain},
            "labels_asked": {d: len(a.asked) for d, a in answers.items() if a.asked},
            "labels_answered": {d: a.answered for d, a in answers.items() if a.asked},
            "to_label": to_label}


def file_labeller(path: Path, labels: Sequence[str]) -> Labeller:
    """Answers from a labelled file (JSONL/CSV: text, label); texts it lacks stay unlabelled."""
    from trainer.data.sources import load_file

    known = {ex.text: ex.label for ex in load_file(path, tuple(labels))}
    print(f"{path}: {len(known)} labelled texts for the gate", file=sys.stderr)
    return lambda domain, texts: {t: known[t] for t in texts if t in known}
