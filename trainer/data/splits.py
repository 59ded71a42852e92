"""How `train` splits its data: the user's file into train/val/test, or their own --val-data and
--test-data files instead; the label set taken from the data. Said out loud and recorded."""

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.sources import (
    DOMAINS,
    SPLIT,
    DataError,
    Example,
    Splits,
    by_domain,
    default_domain,
    labels_in,
    load_examples,
    stratified_split,
)


@dataclass
class TrainingData:
    labels: list[str]
    splits: dict[str, Splits]  # per domain
    plan: dict[str, Any]  # how it was split, for the report and the printed line
    records: dict[str, dict[str, Any]]  # per domain: how to rebuild its test split later


def _record(source: str, whole: bool, fractions: tuple[float, float], domain: str) -> dict[str, Any]:
    return {"source": source if source in DOMAINS else str(Path(source).resolve()),
            "whole": whole, "fractions": list(fractions), "domain_default": domain}


def load_test_data(spec: str, seed: int, threshold: float, labels: tuple[str, ...],
                   home: str) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """`--test-data`: a built-in name means that domain's own test split (its other rows may be
    training data elsewhere, e.g. texts sampled from its traffic); a file is a test set whole.
    Returns its rows per domain and how to rebuild them (the record's `how`)."""
    if spec in DOMAINS:
        return ({spec: stratified_split(load_examples(spec, threshold, labels), seed).test},
                _record(spec, False, SPLIT, spec))
    return by_domain(load_examples(spec, threshold, labels, home)), _record(spec, True,
                                                                           (0.0, 0.0), home)


def without_test_rows(rows: list[Example], test: list[Example], data: str,
                      test_data: str) -> list[Example]:
    """`rows` less every row whose text is also a test row: a test row that was trained on
    scores memory, not generalisation. Data sets repeat texts (VADER's amazon does), so this
    is said, not refused; all of --data overlapping means the test set was given twice."""
    held = {ex.text for ex in test}
    kept = [ex for ex in rows if ex.text not in held]
    if len(kept) < len(rows):
        print(f"note: left {len(rows) - len(kept)} row(s) of {data} out of training: their text "
              f"is also in --test-data {test_data}", file=sys.stderr)
    return kept


def load_training_data(source: str, seed: int, threshold: float, labels: list[str] | None,
                       val_data: str | None = None, test_data: str | None = None,
                       fractions: tuple[float, float] = SPLIT,
                       domain: str | None = None) -> TrainingData:
    """Read and check every input before training; a bad row or label stops here. `domain`
    names the rows of the files that name none (default: each file's stem)."""
    wanted = tuple(labels) if labels else None
    home = default_domain(source, domain)
    rows = load_examples(source, threshold, wanted, home)
    found = labels_in(rows)
    if wanted:
        missing = [label for label in wanted if label not in found]
        if missing:
            raise DataError(f"{source}: --labels names {missing}, which never occur in the "
                            f"training data (it has {found})")
    labels = list(wanted) if wanted else found
    if len(labels) < 2:
        raise DataError(f"{source}: needs at least 2 classes to learn, found only {labels}")
    own = {"val": load_examples(val_data, threshold, tuple(labels), home)} if val_data else {}
    test_record: dict[str, Any] = {}
    if test_data:
        tests, test_record = load_test_data(test_data, seed, threshold, tuple(labels), home)
        own["test"] = [ex for rows in tests.values() for ex in rows]
    shares = (0.0 if val_data else fractions[0], 0.0 if test_data else fractions[1])
    main = by_domain(rows)
    for part, examples in own.items():
        stray = sorted(set(by_domain(examples)) - set(main))
        if stray:
            raise DataError(f"--{part}-data: domain(s) {stray} do not occur in the training data "
                            f"{source} (domains {sorted(main)})")
    splits, records = {}, {}
    for domain, examples in main.items():
        cut = stratified_split(examples, seed, shares)
        val = [ex for ex in own["val"] if ex.domain == domain] if "val" in own else cut.val
        test = [ex for ex in own["test"] if ex.domain == domain] if "test" in own else cut.test
        splits[domain] = Splits(cut.train, val, test)
        records[domain] = test_record or _record(source, False, shares, home)
    if test_data:
        splits = {d: Splits(without_test_rows(s.train, own["test"], source, test_data), s.val,
                            s.test) for d, s in splits.items()}
    train = [ex for s in splits.values() for ex in s.train]
    if not train:
        raise DataError(f"{source}: no training rows left after the split")
    plan = {
        "source": source, "rows": len(rows), "seed": seed,
        "val": val_data or f"{shares[0]:.0%} of {source}, stratified by label",
        "test": test_data or f"{shares[1]:.0%} of {source}, stratified by label",
        "sizes": {part: sum(len(getattr(s, part)) for s in splits.values())
                  for part in ("train", "val", "test")},
        "class_counts": dict(sorted(Counter(ex.label for ex in train).items())),
    }
    return TrainingData(labels, splits, plan, records)


def say(data: TrainingData) -> None:
    """One line each: the labels, and where every row went."""
    p = data.plan
    print(f"labels: {', '.join(data.labels)} (training rows per class: "
          f"{', '.join(f'{k} {v}' for k, v in p['class_counts'].items())})", file=sys.stderr)
    sizes = p["sizes"]
    print(f"split {p['source']} ({p['rows']} rows, seed {p['seed']}): train {sizes['train']}, "
          f"val {sizes['val']} ({p['val']}), test {sizes['test']} ({p['test']}); "
          "use --val-data/--test-data to bring your own", file=sys.stderr)


def rebuild_test(rec: dict[str, Any], domain: str, seed: int, threshold: float,
                 labels: tuple[str, ...], loaded: dict | None = None) -> list[Example] | None:
    """A recorded domain's test split, rebuilt the way `train` made it (None: domain gone).
    `loaded` caches each source's rows across calls, so a multi-domain file is read once."""
    key = (rec["source"], threshold, rec.get("domain_default"))
    cache = loaded if loaded is not None else {}
    if key not in cache:
        cache[key] = by_domain(load_examples(rec["source"], threshold, labels,
                                             rec.get("domain_default")))
    examples = cache[key]
    if domain not in examples:
        return None
    if rec.get("whole"):
        return examples[domain]
    return stratified_split(examples[domain], seed, tuple(rec.get("fractions", SPLIT))).test
