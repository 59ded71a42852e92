"""The drift monitor after `adapt`: v2 serves two domains, and its reference holds both. Is the
false-alarm run length still >= `drift_ert` on in-domain traffic, whatever the mixture of the
served domains, and are the domains it never saw still caught?

v1 is bench/drift.py's nyt model; v2 adapts it the way `make demo`'s loop does: 96 labelled
texts of movie's train split plus herded replay, gated on movie's own test split
(`adapt --test-data movie`). In-domain traffic for v2 is nyt's large held-out pool and movie's
train split past those 96 texts (unseen by v2, and not in its reference). Same protocol and
code as bench/drift.py: the handler's features, a check every `check_every` requests on the
newest window, delays counted after a full window of in-domain history.

    .venv/bin/python bench/drift_adapted.py            # ~20 min on 2 cores
    .venv/bin/python bench/drift_adapted.py --quick    # smoke run (the test suite runs it)

Results: bench/results/drift-adapted.{json,md}.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.drift import (  # noqa: E402
    CAPACITY,
    HELD_OUT,
    SETTINGS,
    SOURCE,
    Detectors,
    Stream,
    bench_v1,
    cached_pools,
    endless,
    first_alarm,
    summarize,
)
from handlers.drift import drift_test  # noqa: E402
from handlers.errors import IntegrityError  # noqa: E402
from handlers.features import REFERENCE_FILE, Reference  # noqa: E402
from handlers.manifest import MANIFEST_NAME, sha256_file, verify_manifest  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.sources import load_source  # noqa: E402
from trainer.learning.adapt import AdaptSettings, run_adapt  # noqa: E402
from trainer.ops.sample import write_rows  # noqa: E402

NEW = "movie"
LABELLED = 96  # the loop's default labelling budget
UNSEEN = ("amazon", "tweets")


def adapted(v1: Path, out: Path, adapt: AdaptSettings) -> Path:
    """v2 as the loop makes it; reused while its files verify and v1 is the same."""
    try:
        verify_manifest(out)
        report = json.loads((out / "report.json").read_text())
        if report["from_manifest_sha256"] == sha256_file(v1 / MANIFEST_NAME):
            return out
    except (IntegrityError, OSError, KeyError, ValueError):
        pass
    texts = traffic(adapt.seed)
    labelled = out.parent / f"{out.name}-labelled.jsonl"
    truth = {e.text: e.label for e in load_source(NEW, adapt.seed)[NEW].train}
    write_rows(labelled, [{"text": t, "label": truth[t], "domain": NEW}
                          for t in texts[:LABELLED]])
    run_adapt(adapt, v1, str(labelled), out, test_data=NEW)
    return out


def traffic(seed: int) -> list[str]:
    """movie's train split in the loop's order: the first LABELLED were labelled."""
    texts = [e.text for e in load_source(NEW, seed)[NEW].train]
    random.Random(seed).shuffle(texts)
    return texts


def mixed(pools: dict, mix: dict[str, float], n: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """n requests drawn from the domains of `mix` by share, each domain's pool in permutations."""
    names = list(mix)
    which = rng.choice(len(names), size=n, p=list(mix.values()))
    width = pools[names[0]][0].shape[1]
    feats, classes = np.empty((n, width), np.float32), np.empty(n, np.int64)
    for i, d in enumerate(names):
        rows = which == i
        idx = endless(len(pools[d][1]), int(rows.sum()), rng)
        feats[rows], classes[rows] = pools[d][0][idx], pools[d][1][idx]
    return feats, classes


def stream(pools: dict, before: dict[str, float], history: int, after: dict[str, float],
           n_after: int, rng: np.random.Generator) -> Stream:
    f1, c1 = mixed(pools, before, history, rng)
    f2, c2 = mixed(pools, after, n_after, rng) if n_after else (f1[:0], c1[:0])
    return Stream(np.concatenate([f1, f2]), np.concatenate([c1, c2]), history)


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    train, v1 = bench_v1(quick)
    adapt = (AdaptSettings(epochs=1, min_steps=0, patience=0, max_length=64, max_eval=100,
                           memory=100) if quick else AdaptSettings())
    v2 = adapted(v1, ROOT / "runs" / "bench" / ("drift-v2-quick" if quick else "drift-v2"),
                 adapt)
    reference = Reference.load(v2 / REFERENCE_FILE)
    cap = 150 if quick else None
    texts = {SOURCE: [e.text for e in load_source(
        SOURCE, train.seed, fractions=(train.val_fraction, HELD_OUT))[SOURCE].test][:cap],
             NEW: traffic(adapt.seed)[LABELLED:][:cap or 3000],
             **{d: [e.text for e in load_source(d, train.seed)[d].test][:cap] for d in UNSEEN}}
    pools = cached_pools(v2, reference, texts, adapt.max_length)
    rng = np.random.default_rng(args.seed)
    streams, length = (1, 600) if quick else (args.streams, args.length)
    trials, history, follow = (3, 300, 200) if quick else (args.trials, CAPACITY, 400)
    in_domain = {"nyt+movie": {SOURCE: 0.5, NEW: 0.5}, "nyt 90 / movie 10": {SOURCE: 0.9, NEW: 0.1},
                 "nyt only": {SOURCE: 1.0}, "movie only": {NEW: 1.0}}
    det = Detectors(reference)
    detect = det.shipped
    rows: dict[str, dict] = {}
    for name, mix in in_domain.items():
        n = streams if name == "nyt+movie" else max(1, streams // 3)
        outcomes, rules = [], []
        for _ in range(n):
            s = stream(pools, mix, length, {}, 0, rng)
            outcomes.append(first_alarm(detect, s))
            if outcomes[-1]["history_alarm"]:  # which test fired, for the record
                t = outcomes[-1]["history_alarm"]
                rules.append(f"{t}: {drift_test(det.ref, det.window(s, t), SETTINGS)['rule']}")
        rows[name] = {**summarize(outcomes, [("in_domain", length)] * n), "alarms": rules}
        print(name, rows[name], file=sys.stderr)
    for d in UNSEEN:
        outcomes = [first_alarm(detect, stream(pools, in_domain["nyt+movie"], history, {d: 1.0},
                                               follow, rng)) for _ in range(trials)]
        rows[f"switch to {d}"] = summarize(outcomes, [(f"switch_{d}", history)] * trials)
        print(d, rows[f"switch to {d}"], file=sys.stderr)
    v2_report = json.loads((v2 / "report.json").read_text())
    return {"settings": {"quick": quick, "seed": args.seed, "drift": SETTINGS.__dict__,
                         "window": CAPACITY, "in_domain_length": length, "trials": trials,
                         "history": history, "follow_switch": follow,
                         "reference_sizes": v2_report["reference_sizes"],
                         "pool_sizes": {d: len(p[1]) for d, p in pools.items()},
                         "v2_test_accuracy": {d: r["accuracy"] for d, r in
                                              v2_report["test_by_domain"].items()}},
            "rows": rows}


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "drift-adapted-quick" if result["settings"]["quick"] else "drift-adapted"
    atomic_write_json(out / f"{stem}.json", result, sort_keys=False)
    lines = ["| traffic to v2 (nyt + movie) | requests watched | false alarms | ERT | ERT 95 % "
             "lower bound | caught | median delay | max delay |", "|---" * 8 + "|"]
    for name, r in result["rows"].items():
        if "ert_requests_observed" in r:
            lines.append(f"| {name} | {r['ert_requests_observed']} | {r['ert_false_alarms']} | "
                         f"{r['ert_estimate'] or '—'} | {r['ert_lower95']} | | | |")
        else:
            (d,) = [k[len("switch_"):-len("_detected")] for k in r if k.endswith("_detected")]
            lines.append(f"| {name} | | | | | {r[f'switch_{d}_detected']} | "
                         f"{r[f'switch_{d}_median']} | {r[f'switch_{d}_max']} |")
    s = result["settings"]
    alarms = [f"{name} at {a}" for name, r in result["rows"].items() for a in r.get("alarms", [])]
    lines += ["", "False alarms (stream, request: rule): " + ("; ".join(alarms) or "none") + "."]
    lines += ["", f"Reference sizes {s['reference_sizes']}; pools {s['pool_sizes']}; v2 test "
              f"accuracy {s['v2_test_accuracy']}. Checks every {SETTINGS.check_every} requests "
              f"on the newest {s['window']}; switches after {s['history']} requests of nyt+movie."]
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--streams", type=int, default=12, help="50/50 in-domain streams (the other "
                                                           "mixtures get a third as many)")
    p.add_argument("--length", type=int, default=20_000, help="requests per in-domain stream")
    p.add_argument("--trials", type=int, default=10, help="streams per unseen domain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    result = run(args)
    write(result, Path(args.out))
    print(json.dumps(result["rows"], indent=1))


if __name__ == "__main__":
    main()
