"""Online drift detection, as a server left running sees it: how many in-domain requests pass
before a false alarm (the expected run length, ERT), and how many requests after a switch, or
into a 10 % mixture of a new domain, an alarm takes. Every detector sees the same streams of
the handler's own features and is checked every `check_every` requests; delays start after a
full window of in-domain history, so no detector gets a fresh window at the switch.

    .venv/bin/python bench/drift.py            # full: 10 x 20,000 in-domain requests, 20 trials
    .venv/bin/python bench/drift.py --quick    # smoke run (the test suite runs it)
    .venv/bin/python bench/drift.py --production movie   # a frozen production reference

With --production DOMAIN the version serves DOMAIN and its reference is frozen from its own
traffic (`trainer drift --freeze-reference`): 5,000 distinct requests of DOMAIN (movie, the one
built-in domain large enough for 5,000 reference texts and a disjoint stream pool), beside a
frozen reference the size of the archive's, on the same streams; the shifts are 10 % mixtures
of, and switches to, each other domain.

The alibi-detect rows (KSDrift, and CVMDriftOnline calibrated to the same ERT) run in their own
virtualenv, `make .venv-alibi`; without it they are left out, and the results say so.
Results: bench/results/drift.{json,md}.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from handlers import frozen  # noqa: E402
from handlers.drift import DriftSettings, drift_test, window_test  # noqa: E402
from handlers.features import REFERENCE_FILE, Reference, feature_matrix  # noqa: E402
from handlers.runtime import RuntimeSettings  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.reference import embed  # noqa: E402
from trainer.data.sources import DOMAINS, SPLIT, load_source, load_vader  # noqa: E402
from trainer.learning.train import TrainSettings, run_train  # noqa: E402
from trainer.model.rundir import load_run  # noqa: E402
from trainer.ops.client import TorchServeClient  # noqa: E402
from trainer.ops.server import TorchServe  # noqa: E402
from trainer.packaging.archive import ArchiveSettings, build_archive  # noqa: E402

SETTINGS = DriftSettings()
CAPACITY = RuntimeSettings().window  # the handler's window: what every check can see
SOURCE = "nyt"
HELD_OUT = 0.45  # test share of the bench model's source: a large in-domain pool
ALIBI_PYTHON = ROOT / ".venv-alibi" / "bin" / "python"


@dataclass
class Stream:
    features: np.ndarray  # (n, features), the handler's columns
    classes: np.ndarray  # (n,) predicted class
    switch: int  # first request of the new traffic; len(features) for an in-domain stream


def pool_features(run: tuple, reference: Reference, texts: list[str], max_length: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The features the handler computes for each text (its ModelRuntime, in-process)."""
    probs, pooled, tokens = embed(run[0], run[1], texts, max_length)
    return feature_matrix(pooled, probs, tokens, reference.projection), probs.argmax(axis=1)


def domain_pools(run_dir: Path, reference: Reference, settings: TrainSettings, quick: bool
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each domain's held-out test split as the handler sees it; cached in the run dir (the
    run is reused only while its inputs are unchanged, and the texts are checked too)."""
    texts = {}
    for d in DOMAINS:
        fractions = (settings.val_fraction, HELD_OUT) if d == SOURCE else SPLIT
        split = [e.text for e in load_source(d, settings.seed, fractions=fractions)[d].test]
        texts[d] = split[:150] if quick else split
    return cached_pools(run_dir, reference, texts, settings.max_length)


def cached_pools(run_dir: Path, reference: Reference, texts: dict[str, list[str]],
                 max_length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    key = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    cache = run_dir / "bench_drift_pools.npz"
    if cache.exists():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return {d: (z[f"{d}_features"], z[f"{d}_classes"]) for d in texts}
    loaded = load_run(run_dir)
    pools = {d: pool_features(loaded, reference, t, max_length) for d, t in texts.items()}
    np.savez(cache, key=np.asarray(key), **{f"{d}_features": p[0] for d, p in pools.items()},
             **{f"{d}_classes": p[1] for d, p in pools.items()})
    return pools


def endless(n_pool: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices into a pool: whole permutations back to back, so a window shorter than the
    pool repeats no row."""
    return np.concatenate([rng.permutation(n_pool) for _ in range(n // n_pool + 1)])[:n]


def make_stream(pools: dict, history: int, after: dict[str, float], n_after: int,
                rng: np.random.Generator, source: str = SOURCE) -> Stream:
    """`history` source requests, then `n_after` drawn from the domains of `after` by share."""
    names = list(after)
    draws = rng.choice(len(names), size=n_after, p=list(after.values()))
    parts = [(source, endless(len(pools[source][1]), history, rng))]
    picks = {d: iter(endless(len(pools[d][1]), int((draws == i).sum()), rng))
             for i, d in enumerate(names)}
    rows = [(names[i], next(picks[names[i]])) for i in draws]
    feats = [pools[source][0][parts[0][1]]] + ([np.stack([pools[d][0][j] for d, j in rows])]
                                               if rows else [])
    classes = [pools[source][1][parts[0][1]]] + ([np.asarray([pools[d][1][j] for d, j in rows])]
                                                 if rows else [])
    return Stream(np.concatenate(feats), np.concatenate(classes), history)


class Detectors:
    """The windowed detectors: (stream, t) -> alarm on the newest CAPACITY of t requests."""

    def __init__(self, reference: Reference) -> None:
        self.ref = reference.as_test_input()
        self.names = reference.names

    def window(self, s: Stream, t: int) -> dict:
        lo = max(0, t - CAPACITY)
        return {"classes": s.classes[lo:t],
                "features": {n: s.features[lo:t, i] for i, n in enumerate(self.names)}}

    def shipped(self, s: Stream, t: int) -> bool:
        return drift_test(self.ref, self.window(s, t), SETTINGS)["is_drift"]

    def one_window_alpha01(self, s: Stream, t: int) -> bool:
        """The rule shipped before: the whole window, corrected p < 0.01, KS >= 0.1."""
        return bool(window_test(self.ref, self.window(s, t), DriftSettings(min_effect=0.1),
                                0.01)["fired"])

    def all(self) -> dict[str, Callable[[Stream, int], bool]]:
        return {"shipped": self.shipped, "one_window_alpha01": self.one_window_alpha01}


def first_alarm(detect: Callable[[Stream, int], bool], s: Stream) -> dict:
    """In-domain: checks from min_window on; shifted: checks after the switch only."""
    n, every = len(s.features), SETTINGS.check_every
    start = s.switch if s.switch < n else 0
    for t in range(start + every, n + 1, every):
        if t >= SETTINGS.min_window and detect(s, t):
            return {"history_alarm": t if s.switch >= n else None,
                    "alarm": t if s.switch < n else None}
    return {"history_alarm": None, "alarm": None}


def monitor_latency(run_dir: Path, workdir: Path, texts: list[str]) -> dict[str, float]:
    """The shipped archive against a twin with statistics off, requests interleaved, through
    TorchServe at concurrency 1: what the features, the window and the checks cost a request."""
    store = workdir / "store"
    build_archive(run_dir, "stats_on", "1", store, ArchiveSettings(), allow_weak=True)
    build_archive(run_dir, "stats_off", "1", store, ArchiveSettings(monitor=False),
                  allow_weak=True)
    with TorchServe(workdir / "ts", store, ROOT / "config.properties", ports="free",
                    env={"DRIFTSERVE_STATS_DIR": str(workdir / "stats")}) as server:
        client = TorchServeClient(server.inference_url, server.management_url, server.key_file)
        for name in ("stats_on", "stats_off"):
            client.register(f"{name}.v1.mar", name)
        timings: dict[str, list[float]] = {"stats_on": [], "stats_off": []}
        for i, text in enumerate(texts):
            for model in (("stats_on", "stats_off") if i % 2 else ("stats_off", "stats_on")):
                start = time.perf_counter()
                client.predict(model, text)
                timings[model].append(1000 * (time.perf_counter() - start))
    out = {f"{m}_{q}_ms": round(float(np.percentile(v, p)), 3)
           for m, v in timings.items() for q, p in (("p50", 50), ("p95", 95))}
    out["overhead_p50"] = round(out["stats_on_p50_ms"] / out["stats_off_p50_ms"] - 1, 4)
    out["requests_per_model"] = len(texts)
    return out


def latency_only(args: argparse.Namespace) -> None:
    """#28's cost goal: p50 with statistics within +10 % of without, rounds in one run."""
    settings, run_dir = bench_v1(args.quick)
    texts = [e.text for e in load_source(SOURCE, settings.seed)[SOURCE].test][
        :60 if args.quick else 600]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        for i in range(args.rounds):
            rounds.append(monitor_latency(run_dir, Path(tmp) / f"round{i}", texts))
            print(json.dumps(rounds[-1]), file=sys.stderr)
    overhead = statistics.median(r["overhead_p50"] for r in rounds)
    result = {"rounds": rounds, "median_overhead_p50": overhead, "goal_met": overhead <= 0.10,
              "texts": len(texts), "source": SOURCE}
    out = Path(args.out)
    stem = "drift-latency-quick" if args.quick else "drift-latency"
    atomic_write_json(out / f"{stem}.json", result, sort_keys=False)
    lines = ["| round | p50 on (ms) | p50 off (ms) | p50 overhead | p95 on (ms) | p95 off (ms) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {i + 1} | {r['stats_on_p50_ms']} | {r['stats_off_p50_ms']} | "
              f"{100 * r['overhead_p50']:+.1f} % | {r['stats_on_p95_ms']} | {r['stats_off_p95_ms']} |"
              for i, r in enumerate(rounds)]
    lines += ["", f"Through TorchServe at concurrency 1, {len(texts)} held-out {SOURCE} texts per "
              f"model and round, the two archives' requests interleaved; each round starts its own "
              f"server. Goal (#28): p50 with statistics within +10 % of without: "
              f"{'met' if overhead <= 0.10 else 'MISSED'} (median over rounds "
              f"{100 * overhead:+.1f} %)."]
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")


def run_alibi(reference: Reference, streams: list[Stream], workdir: Path, quick: bool
              ) -> dict | str:
    if quick:
        return "not run with --quick (CVMDriftOnline's calibration alone takes minutes)"
    if not ALIBI_PYTHON.exists():
        return "not run: no .venv-alibi (make .venv-alibi)"
    # CVMDriftOnline targets ERT over d features with per-feature quantiles 1 - beta,
    # beta = 1 - (1 - 1/ERT)^(1/d): it needs more than 1/beta bootstrap streams.
    beta = 1 - (1 - 1 / SETTINGS.ert) ** (1 / reference.features.shape[1])
    meta = {"ert": SETTINGS.ert, "check_every": SETTINGS.check_every, "ks_window": 200,
            "min_window": SETTINGS.min_window, "cvm_windows": [50, 200],
            "n_bootstraps": int(np.ceil(1.1 / beta)),
            "streams": [{"switch": s.switch} for s in streams]}
    path = workdir / "streams.npz"
    np.savez(path, reference=reference.features.astype(np.float64),
             meta=np.asarray(json.dumps(meta)),
             **{f"stream{i}": s.features.astype(np.float64) for i, s in enumerate(streams)})
    out = workdir / "alibi.json"
    proc = subprocess.run([str(ALIBI_PYTHON), str(ROOT / "bench" / "drift_alibi.py"), str(path),
                           str(out)], capture_output=True, text=True)
    if proc.returncode:
        return f"failed: {proc.stderr[-1500:]}"
    return json.loads(out.read_text())


def summarize(outcomes: list[dict], scenarios: list[tuple[str, int]]) -> dict:
    """Per scenario: ERT (requests / false alarms; 95 % lower bound) or delays after the switch."""
    row: dict = {}
    for name in dict.fromkeys(n for n, _ in scenarios):
        picked = [(o, length) for o, (n, length) in zip(outcomes, scenarios) if n == name]
        if name == "in_domain":
            alarms = [o["history_alarm"] for o, _ in picked]
            fired = [a for a in alarms if a is not None]
            total = sum(a if a is not None else length for a, (_, length) in zip(alarms, picked))
            row["ert_requests_observed"] = total
            row["ert_false_alarms"] = len(fired)
            row["ert_estimate"] = round(total / len(fired)) if fired else None
            row["ert_lower95"] = round(2 * total / stats.chi2.ppf(0.95, 2 * len(fired) + 2))
            continue
        delays = [o["alarm"] - switch if o["alarm"] is not None else None
                  for o, switch in picked]
        hit = [d for d in delays if d is not None]
        row[f"{name}_detected"] = round(len(hit) / len(delays), 3)
        row[f"{name}_median"] = statistics.median(hit) if hit else None
        row[f"{name}_max"] = max(hit) if hit else None
        row[f"{name}_history_false_alarms"] = sum(o["history_alarm"] is not None for o, _ in picked)
    return row


def bench_v1(quick: bool) -> tuple[TrainSettings, Path]:
    """The bench's nyt model (trained once, then reused while its inputs are unchanged)."""
    settings = (TrainSettings(max_train=128, max_eval=200, epochs=1, min_steps=0, patience=0,
                              max_length=64, test_fraction=HELD_OUT)
                if quick else TrainSettings(test_fraction=HELD_OUT))
    run_dir = ROOT / "runs" / "bench" / ("drift-nyt-quick" if quick else "drift-nyt")
    run_train(settings, SOURCE, run_dir, reuse=True)
    return settings, run_dir


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    settings, run_dir = bench_v1(quick)
    reference = Reference.load(run_dir / REFERENCE_FILE)
    pools = domain_pools(run_dir, reference, settings, quick)
    rng = np.random.default_rng(args.seed)
    n_streams, length, trials = (2, 600, 3) if quick else (args.streams, args.length, args.trials)
    history, follow_switch, follow_mix = (300, 200, 600) if quick else (CAPACITY, 400, 2000)
    streams, scenarios = [], []
    for _ in range(n_streams):
        streams.append(make_stream(pools, length, {SOURCE: 1.0}, 0, rng))
        scenarios.append(("in_domain", length))
    for d in (d for d in DOMAINS if d != SOURCE):
        for _ in range(trials):
            streams.append(make_stream(pools, history, {d: 1.0}, follow_switch, rng))
            scenarios.append((f"switch_{d}", history))
        for _ in range(trials):
            streams.append(make_stream(pools, history, {SOURCE: 0.9, d: 0.1}, follow_mix, rng))
            scenarios.append((f"mix10_{d}", history))
    det = Detectors(reference)
    result: dict = {"settings": {"quick": quick, "seed": args.seed, "drift": SETTINGS.__dict__,
                                 "window": CAPACITY, "in_domain_streams": n_streams,
                                 "in_domain_length": length, "trials": trials,
                                 "history": history, "follow_switch": follow_switch,
                                 "follow_mix": follow_mix,
                                 "reference_size": len(reference.classes),
                                 "pool_sizes": {d: len(p[1]) for d, p in pools.items()},
                                 "train": {k: v for k, v in settings.__dict__.items()}},
                    "detectors": {}, "seconds": {}, "checks": {}}
    for name, detect in det.all().items():
        started, calls = time.time(), [0]

        def counted(s: Stream, t: int, detect=detect, calls=calls) -> bool:
            calls[0] += 1
            return detect(s, t)

        outcomes = [first_alarm(counted, s) for s in streams]
        result["checks"][name] = calls[0]
        result["detectors"][name] = summarize(outcomes, scenarios)
        result["seconds"][name] = round(time.time() - started, 1)
        print(name, json.dumps(result["detectors"][name]), file=sys.stderr)
    result["check_ms"] = {name: round(1000 * result["seconds"][name] / checks, 2)
                          for name, checks in result.pop("checks").items()}
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        if not quick:
            texts = [e.text for e in load_source(SOURCE, settings.seed)[SOURCE].test][:600]
            result["latency"] = monitor_latency(run_dir, Path(tmp) / "latency", texts)
        alibi = run_alibi(reference, streams, Path(tmp), quick)
    if isinstance(alibi, str):
        result["alibi"] = alibi
    else:
        result["alibi"] = {k: alibi[k] for k in ("cvm_configure_s", "seconds")}
        for name, outcomes in alibi["results"].items():
            result["detectors"][name] = summarize(outcomes, scenarios)
    return result


def run_production(args: argparse.Namespace) -> dict:
    """The shipped test against frozen production references of two sizes, same streams."""
    quick, served = args.quick, args.production
    settings, run_dir = bench_v1(quick)
    archived = Reference.load(run_dir / REFERENCE_FILE)
    texts = list(dict.fromkeys(e.text for e in load_vader(served)))
    np.random.default_rng(args.seed).shuffle(texts)
    sizes = [200, 100] if quick else [args.reference_requests, len(archived.classes)]
    if len(texts) < sizes[0] + CAPACITY:
        raise SystemExit(f"--production {served}: {len(texts)} distinct texts; a reference of "
                         f"{sizes[0]} and a stream pool of {CAPACITY} need more")
    pool_texts = {f"{served}_reference": texts[:sizes[0]], served: texts[sizes[0]:]}
    for d in (d for d in DOMAINS if d != served):
        fractions = (settings.val_fraction, HELD_OUT) if d == SOURCE else SPLIT
        split = [e.text for e in load_source(d, settings.seed, fractions=fractions)[d].test]
        pool_texts[d] = split[:150] if quick else split
    if quick:
        pool_texts[served] = pool_texts[served][:300]
    pools = cached_pools(run_dir, archived, pool_texts, settings.max_length)
    ref_features, ref_classes = pools.pop(f"{served}_reference")
    references = {f"frozen {n}": frozen.freeze(archived, ref_features[:n], ref_classes[:n])
                  for n in sizes}
    rng = np.random.default_rng(args.seed)
    n_streams, length, trials = (2, 600, 3) if quick else (args.streams, args.length, args.trials)
    history, follow_switch, follow_mix = (300, 200, 600) if quick else (CAPACITY, 400, 2000)
    streams, scenarios = [], []
    for _ in range(n_streams):
        streams.append(make_stream(pools, length, {served: 1.0}, 0, rng, served))
        scenarios.append(("in_domain", length))
    for d in (d for d in DOMAINS if d != served):
        for _ in range(trials):
            streams.append(make_stream(pools, history, {d: 1.0}, follow_switch, rng, served))
            scenarios.append((f"switch_{d}", history))
        for _ in range(trials):
            streams.append(make_stream(pools, history, {served: 0.9, d: 0.1}, follow_mix, rng,
                                       served))
            scenarios.append((f"mix10_{d}", history))
    result: dict = {"settings": {"quick": quick, "seed": args.seed, "production": served,
                                 "drift": SETTINGS.__dict__, "window": CAPACITY,
                                 "in_domain_streams": n_streams, "in_domain_length": length,
                                 "trials": trials, "history": history,
                                 "follow_switch": follow_switch, "follow_mix": follow_mix,
                                 "reference_sizes": sizes,
                                 "pool_sizes": {d: len(p[1]) for d, p in pools.items()}},
                    "detectors": {}, "seconds": {}}
    for name, reference in references.items():
        started = time.time()
        outcomes = [first_alarm(Detectors(reference).shipped, s) for s in streams]
        result["detectors"][name] = summarize(outcomes, scenarios)
        result["seconds"][name] = round(time.time() - started, 1)
        print(name, json.dumps(result["detectors"][name]), file=sys.stderr)
    return result


def production_goals(result: dict) -> list[str]:
    """#28's goals for the 5,000-request reference (the first row)."""
    name = f"frozen {result['settings']['reference_sizes'][0]}"
    row, follow = result["detectors"][name], result["settings"]["follow_mix"]
    shifts = [k.removeprefix("mix10_").removesuffix("_detected") for k in row
              if k.startswith("mix10_") and k.endswith("_detected")]
    checks = [(f"10 % {d} caught within {follow} requests in >= 90 % of trials",
               row[f"mix10_{d}_detected"] >= 0.9, f"{100 * row[f'mix10_{d}_detected']:.0f} %")
              for d in shifts]
    checks.append(("ERT >= 10,000 (95 % lower bound)", row["ert_lower95"] >= 10_000,
                   f"{row['ert_lower95']:,}"))
    medians = {d: row[f"switch_{d}_median"] for d in shifts}
    checks.append(("full switch median <= 100 requests",
                   all(m is not None and m <= 100 for m in medians.values()),
                   ", ".join(f"{d} {m}" for d, m in medians.items())))
    return [f"- {'met' if ok else 'MISSED'}: {what} ({name}: {value})"
            for what, ok, value in checks]


def rank(result: dict) -> list[str]:
    """By median delay over the whole-domain switches, then the 10 % mixtures (missed = never)."""
    def key(name: str) -> tuple[float, float]:
        row = result["detectors"][name]
        def mean(prefix: str) -> float:
            values = [v if v is not None else float("inf")
                      for k, v in row.items() if k.startswith(prefix) and k.endswith("_median")]
            return sum(values) / max(1, len(values))
        return mean("switch_"), mean("mix10_")
    return sorted(result["detectors"], key=key)


def write(result: dict, out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = ("drift-quick" if quick else "drift") + (
        f"-production-{result['settings']['production']}" if "production" in result["settings"]
        else "")
    atomic_write_json(out / f"{stem}.json", result, sort_keys=False)
    names = rank(result)
    keys = list(result["detectors"][names[0]])
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(result["detectors"][n].get(k))
                                            for n in names) + " |")
    s = result["settings"]
    if "production" in s:
        lines += ["", f"The version serves {s['production']}; its reference is frozen from "
                  f"{s['production']} requests ({' and '.join(map(str, s['reference_sizes']))}; "
                  f"the second is the archive reference's size), disjoint from the stream "
                  f"pools {s['pool_sizes']}. {s['in_domain_streams']} in-domain streams of "
                  f"{s['in_domain_length']} requests; {s['trials']} trials per shift, each after "
                  f"{s['history']} in-domain requests; checks every {SETTINGS.check_every} "
                  f"requests on the newest {s['window']}; shipped test settings.", "",
                  "Goals:", *production_goals(result)]
        atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
        return
    lines += ["", f"Columns ranked by delay (whole-domain switches, then 10 % mixtures). "
              f"{s['in_domain_streams']} in-domain streams of {s['in_domain_length']} requests; "
              f"{s['trials']} trials per shift, each after {s['history']} in-domain requests; "
              f"checks every {SETTINGS.check_every} requests on the newest {s['window']}.",
              f"alibi-detect: {result['alibi'] if isinstance(result['alibi'], str) else 'run'}.",
              f"Milliseconds per check: {result['check_ms']}."]
    if "latency" in result:
        lat = result["latency"]
        lines.append(f"Through TorchServe, concurrency 1, {lat['requests_per_model']} requests "
                     f"each, interleaved: p50 {lat['stats_on_p50_ms']} ms with statistics, "
                     f"{lat['stats_off_p50_ms']} ms without ({100 * lat['overhead_p50']:+.1f} %); "
                     f"p95 {lat['stats_on_p95_ms']} vs {lat['stats_off_p95_ms']} ms.")
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--streams", type=int, default=10, help="in-domain streams for the ERT")
    p.add_argument("--length", type=int, default=20_000, help="requests per in-domain stream")
    p.add_argument("--trials", type=int, default=20, help="streams per shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--production", metavar="DOMAIN",
                   help="the version serves DOMAIN, against a reference frozen from its traffic")
    p.add_argument("--reference-requests", type=int, default=5000,
                   help="with --production: requests in the frozen reference (default: 5000)")
    p.add_argument("--latency", action="store_true",
                   help="only what the monitor costs a request (TorchServe, concurrency 1), "
                        "statistics on vs off, --rounds times; writes drift-latency.{json,md}")
    p.add_argument("--rounds", type=int, default=3, help="with --latency: interleaved rounds")
    args = p.parse_args()
    if args.latency:
        latency_only(args)
        return
    result = run_production(args) if args.production else run(args)
    write(result, Path(args.out), args.quick)
    print(json.dumps(result["detectors"], indent=1))


if __name__ == "__main__":
    main()
