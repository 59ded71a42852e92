"""`trainer evaluate`: a run dir's scores on the test split of each named domain, as JSON.

A run dir records where each domain it has seen came from (`domain_sources`: source, split seed,
label threshold, cap, and a hash of the test split), so every later step scores that domain on
exactly the same test examples -- the accuracy matrix compares like with like.
"""

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.common.errors import DataError
from trainer.data.lineage import test_splits
from trainer.data.reference_texts import read_reference_texts
from trainer.data.sources import DOMAINS, SPLIT, default_domain
from trainer.data.splits import load_test_data
from trainer.model.churn import churn_by_domain
from trainer.model.evaluate import answers_by_domain, evaluate_domains
from trainer.model.rundir import load_run


def resolve(names: Sequence[str], report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Domain names the run has seen use their recorded test split; a built-in domain is its
    own test split (split with the run's seed); a data file is scored whole, every row."""
    known = report.get("domain_sources", {})
    settings = report.get("settings", {})
    seed, threshold = settings.get("seed", 0), settings.get("label_threshold", 0.5)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in known:
            out[name] = dict(known[name])
        elif name in DOMAINS or Path(name).is_file():
            rows, how = load_test_data(name, seed, threshold, tuple(report["labels"]),
                                       default_domain(name))
            for domain in rows:
                out[domain] = {**how, "seed": seed, "label_threshold": threshold, "max_eval": 0}
        else:
            raise DataError(f"{name!r} is neither a domain this run has seen "
                            f"({', '.join(known) or 'none'}), a built-in domain, nor a file")
    return out


def scored_rows(source: Mapping[str, Any]) -> str:
    """Which rows of the source were scored, in words."""
    name = Path(source["source"]).name
    if source.get("whole"):
        return f"every row of {name}"
    share = round(100 * source.get("fractions", SPLIT)[1])
    cap = f", its first {source['max_eval']}" if source.get("max_eval") else ""
    return f"the {share} % test split of {name}, seed {source['seed']}{cap}"


def run_evaluate(run_dir: Path, names: Sequence[str] = (), max_length: int = 128,
                 against: Path | None = None) -> dict[str, Any]:
    """`against` (an earlier version's run dir): churn per domain, on the test split and on the
    held-out texts this run carries, of this run's answers against that one's."""
    model, tokenizer, labels, report = load_run(run_dir)
    names = list(names) or list(report.get("domains_seen", []))
    if not names:
        raise DataError(f"{run_dir}: no domains named and the run records none; use --domains")
    sources = resolve(names, report)
    tests = test_splits(sources, labels)
    result = evaluate_domains(model, tokenizer, tests, labels, max_length, with_predictions=True)
    after = result.pop("predictions")
    churn = None
    if against is not None:
        held = {d: t for d, t in read_reference_texts(run_dir).items() if d in tests}
        old_model, old_tokenizer, old_labels, _ = load_run(against)
        if old_labels != labels:
            raise DataError(f"--against {against}: labels {old_labels} differ from {labels}")
        before = answers_by_domain(old_model, old_tokenizer,
                                   {d: [ex.text for ex in t] for d, t in tests.items()},
                                   max_length)
        churn = churn_by_domain(before, after, tests, labels,
                                answers_by_domain(old_model, old_tokenizer, held, max_length),
                                answers_by_domain(model, tokenizer, held, max_length))
    for domain, s in result["by_domain"].items():
        s["scored"] = scored_rows(sources[domain])
        c = churn[domain]["test"] if churn else None
        print(f"{domain:<12} n={s['n']:>5} ({s['scored']})  accuracy {s['accuracy']:.4f}  "
              f"macro-F1 {s['macro_f1']:.4f}" + (
                  f"  vs {Path(against).name}: changed {100 * c['disagreement']:.1f} %, "
                  f"right -> wrong {100 * c['negative_flip_rate']:.1f} %, wrong -> right "
                  f"{100 * c['positive_flip_rate']:.1f} %" if c else ""), file=sys.stderr)
    return {"run": str(run_dir), **result, **({"churn": churn} if churn else {})}


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("evaluate", help="score a run dir on domains' test splits (JSON)")
    p.add_argument("--run", required=True, help="run directory from train or adapt")
    p.add_argument("--domains", default="",
                   help="comma-separated domains seen by the run, built-in domains or data files "
                        "(default: every domain the run has seen)")
    p.add_argument("--max-length", type=int, default=128, help="tokens kept per text (default: 128)")
    p.add_argument("--against", type=Path,
                   help="an earlier run dir (e.g. vN): also report the churn of this run's "
                        "answers against it per domain (answers changed, right -> wrong, "
                        "wrong -> right; and changed on the held-out texts)")
    p.set_defaults(func=lambda args: (run_evaluate(
        Path(args.run), [d.strip() for d in args.domains.split(",") if d.strip()],
        args.max_length, args.against), 0))
