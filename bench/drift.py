"""How fast, and how falsely, the drift monitor fires on the built-in data, side by side with a
per-dimension KS on the raw embedding (Bonferroni, the alibi-detect default style).

    .venv/bin/python bench/drift.py            # full: nyt model, 40 in-domain windows, 20 trials
    .venv/bin/python bench/drift.py --quick    # smoke run (the test suite runs it)

The features are the ones the real TorchServe handler computed for each request (read back from
its statistics window); the raw baseline uses the same model's embeddings computed in-process.
Every detector sees the same streams. Results: bench/results/drift.{json,md,png}.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from handlers.drift import DriftSettings, drift_test  # noqa: E402
from handlers.features import REFERENCE_FILE, Reference  # noqa: E402
from handlers.stats import merge_windows  # noqa: E402
from trainer.archive import ArchiveSettings, build_archive  # noqa: E402
from trainer.artifacts import atomic_savefig, atomic_write_json, atomic_write_text  # noqa: E402
from trainer.client import TorchServeClient  # noqa: E402
from trainer.data import DOMAINS, load_source  # noqa: E402
from trainer.reference import embed  # noqa: E402
from trainer.rundir import load_run  # noqa: E402
from trainer.server import TorchServe  # noqa: E402
from trainer.train import TrainSettings, run_train  # noqa: E402

SHIFTED = [d for d in DOMAINS if d != "nyt"]


def serve_and_collect(run_dir: Path, pools: dict[str, list[str]], workdir: Path,
                      latency_n: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Send every sentence through TorchServe once (concurrency 1, so window rows follow the
    send order); time the same requests on a twin model with statistics switched off."""
    store, stats_dir = workdir / "store", workdir / "stats"
    weak_ok = {"allow_weak": True}  # the --quick model is weak; serving is what is measured
    build_archive(run_dir, "drift_on", "1", store, ArchiveSettings(window=100_000), **weak_ok)
    build_archive(run_dir, "drift_off", "1", store, ArchiveSettings(monitor=False), **weak_ok)
    build_archive(run_dir, "stats_on", "1", store, ArchiveSettings(), **weak_ok)  # shipped
    os.environ["DRIFTSERVE_STATS_DIR"] = str(stats_dir)
    with TorchServe(workdir / "ts", store, ROOT / "config.properties", ports="free") as server:
        client = TorchServeClient(server.inference_url, server.management_url, server.key_file)
        client.register("drift_on.v1.mar", "drift_on")
        client.register("drift_off.v1.mar", "drift_off")
        client.register("stats_on.v1.mar", "stats_on")
        order = [(d, t) for d, texts in pools.items() for t in texts]
        for _, text in order:
            client.predict("drift_on", text)
        timings = {"stats_on": [], "drift_off": []}
        for i, (_, text) in enumerate(order[:latency_n] * 2):
            for model in (("stats_on", "drift_off") if i % 2 else ("drift_off", "stats_on")):
                start = time.perf_counter()
                client.predict(model, text)
                timings[model].append(1000 * (time.perf_counter() - start))
        time.sleep(2.0)  # let the worker persist its window
    merged = merge_windows(stats_dir / "drift_on" / "v1", 100_000)
    rows = merged["features"][: len(order)]
    classes = merged["classes"][: len(order)]
    out, start = {}, 0
    for domain, texts in pools.items():
        out[domain] = (rows[start:start + len(texts)], classes[start:start + len(texts)])
        start += len(texts)
    latency = {f"{m}_p50_ms": round(statistics.median(v), 3) for m, v in timings.items()}
    latency.update({f"{m}_p95_ms": round(float(np.percentile(v, 95)), 3)
                    for m, v in timings.items()})
    latency["overhead_p50"] = round(latency["stats_on_p50_ms"] / latency["drift_off_p50_ms"] - 1, 4)
    latency["requests_per_model"] = len(timings["stats_on"])
    return out, latency


class Detectors:
    """Each detector: indices into a domain's pool (+ the pool) -> drift or not."""

    def __init__(self, reference: Reference, ref_raw: np.ndarray, served, raw, settings):
        self.ref = reference
        self.served, self.raw, self.settings = served, raw, settings
        self.ref_raw = ref_raw
        pcs = [n for n in reference.names if n.startswith("pc")]
        self.pc_idx = [reference.names.index(n) for n in pcs]

    def _window(self, picks, columns=None):
        feats = np.concatenate([self.served[d][0][i] for d, i in picks])
        classes = np.concatenate([self.served[d][1][i] for d, i in picks])
        names = self.ref.names if columns is None else [self.ref.names[c] for c in columns]
        cols = range(len(self.ref.names)) if columns is None else columns
        return {"classes": classes, "features": {n: feats[:, c] for n, c in zip(names, cols)}}

    def _reference(self, columns=None):
        names = self.ref.names if columns is None else [self.ref.names[c] for c in columns]
        cols = range(len(self.ref.names)) if columns is None else columns
        return {"labels": self.ref.labels, "classes": self.ref.classes,
                "features": {n: self.ref.features[:, c] for n, c in zip(names, cols)}}

    def product(self, picks, settings: DriftSettings | None = None) -> bool:
        return drift_test(self._reference(), self._window(picks),
                          settings or self.settings)["is_drift"]

    def product_bonferroni(self, picks) -> bool:
        return self.product(picks, DriftSettings(**{**self.settings.__dict__,
                                                     "correction": "bonferroni"}))

    def product_alpha05(self, picks) -> bool:
        return self.product(picks, DriftSettings(**{**self.settings.__dict__, "alpha": 0.05}))

    def pca_only(self, picks) -> bool:
        return drift_test(self._reference(self.pc_idx), self._window(picks, self.pc_idx),
                          self.settings, class_test=False)["is_drift"]

    def raw_bonferroni(self, picks) -> bool:
        window = np.concatenate([self.raw[d][i] for d, i in picks])
        if len(window) < self.settings.min_window:
            return False
        p = stats.ks_2samp(self.ref_raw, window, axis=0).pvalue
        return bool(np.min(p) * self.ref_raw.shape[1] < 0.05)

    def names(self):
        return ["product", "product_bonferroni", "product_alpha05", "pca_only", "raw_bonferroni"]


def stream(pools_n: dict[str, int], mix: dict[str, float], n: int, rng: random.Random):
    """n requests: each drawn from a domain by `mix`, without replacement within the stream."""
    left = {d: rng.sample(range(pools_n[d]), pools_n[d]) for d in mix}
    picks = []
    for _ in range(n):
        d = rng.choices(list(mix), weights=list(mix.values()))[0]
        if not left[d]:
            break
        picks.append((d, np.asarray([left[d].pop()])))
    return picks


def first_fire(detect, picks, checkpoints) -> int | None:
    for k in checkpoints:
        if k <= len(picks) and detect(picks[:k]):
            return k
    return None


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    settings = (TrainSettings(max_train=128, epochs=1, min_steps=0, patience=0, max_length=64)
                if quick else TrainSettings())
    # the full run shares the demo's nyt model (reused when its inputs are unchanged)
    run_dir = ROOT / "runs" / ("bench/nyt-quick" if quick else "sentiment/v1")
    run_train(settings, "nyt", run_dir, reuse=True)
    per_pool = 120 if quick else 0
    pools = {}
    for d in DOMAINS:
        texts = [e.text for e in load_source(d, settings.seed)[d].test]
        pools[d] = texts[:per_pool] if per_pool else texts
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        served, latency = serve_and_collect(run_dir, pools, Path(tmp),
                                            latency_n=40 if quick else 300)
    model, tokenizer, _, _ = load_run(run_dir)
    reference = Reference.load(run_dir / REFERENCE_FILE)
    val = [e.text for e in load_source("nyt", settings.seed)["nyt"].val]
    ref_raw = embed(model, tokenizer, val, settings.max_length)[1]
    raw = {d: embed(model, tokenizer, texts, settings.max_length)[1] for d, texts in pools.items()}
    check_served = float(np.abs(reference.projection.apply(raw["nyt"]) -
                                served["nyt"][0][:, :len(reference.projection.components)]).max())
    drift_settings = DriftSettings()
    det = Detectors(reference, ref_raw, served, raw, drift_settings)
    rng = random.Random(args.seed)
    sizes = {d: len(p) for d, p in pools.items()}
    trials, windows = (5, 10) if quick else (args.trials, args.windows)
    window_n = 100 if quick else 200
    result: dict = {"settings": {"quick": quick, "trials": trials, "in_domain_windows": windows,
                                 "in_domain_window_size": window_n,
                                 "drift": drift_settings.__dict__, "seed": args.seed,
                                 "reference_size": len(reference.classes),
                                 "pool_sizes": sizes, "train": settings.__dict__},
                    "served_vs_inprocess_max_abs_diff": check_served, "latency": latency}
    in_domain = [stream(sizes, {"nyt": 1.0}, window_n, rng) for _ in range(windows)]
    checkpoints = list(range(10, 201, 10))
    switches = {d: [stream(sizes, {d: 1.0}, 200, rng) for _ in range(trials)] for d in SHIFTED}
    mix_points = list(range(50, (300 if quick else 700) + 1, 50))
    mixtures = {p: [stream(sizes, {"nyt": 1 - p, "tweets": p}, mix_points[-1], rng)
                    for _ in range(trials)] for p in (0.1, 0.2, 0.3)}
    for name in det.names():
        detect = getattr(det, name)
        row: dict = {"false_alarm_rate": sum(detect(w) for w in in_domain) / windows,
                     "false_alarm_rate_sequential": sum(
                         first_fire(detect, w, checkpoints) is not None
                         for w in in_domain) / windows}
        for d, runs in switches.items():
            delays = [first_fire(detect, s, checkpoints) for s in runs]
            hit = [x for x in delays if x is not None]
            row[f"switch_{d}_detected"] = len(hit) / len(runs)
            row[f"switch_{d}_median_requests"] = statistics.median(hit) if hit else None
            row[f"switch_{d}_max_requests"] = max(hit) if hit else None
        for p, runs in mixtures.items():
            delays = [first_fire(detect, s, mix_points) for s in runs]
            row[f"mix_{int(p * 100)}_detected_within_500"] = \
                sum(x is not None and x <= 500 for x in delays) / len(runs)
            hit = [x for x in delays if x is not None]
            row[f"mix_{int(p * 100)}_median_requests"] = statistics.median(hit) if hit else None
        result[name] = row
        print(name, json.dumps(row), file=sys.stderr)
    result["timeline"] = timeline(det, sizes, rng)
    return result


def timeline(det: Detectors, sizes: dict[str, int], rng: random.Random) -> dict:
    """300 nyt then 300 tweets requests; the product's max KS over the last 200 requests."""
    picks = stream(sizes, {"nyt": 1.0}, 300, rng) + stream(sizes, {"tweets": 1.0}, 300, rng)
    xs, ks, fired = [], [], []
    for k in range(20, len(picks) + 1, 10):
        window = picks[max(0, k - 200):k]
        r = drift_test(det._reference(), det._window(window), det.settings)
        xs.append(k)
        ks.append(r["max_ks"])
        fired.append(r["is_drift"])
    return {"requests": xs, "max_ks": ks, "is_drift": fired, "switch_at": 300}


def write(result: dict, out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "drift-quick" if quick else "drift"
    atomic_write_json(out / f"{stem}.json", result, sort_keys=False)
    names = [n for n in ("product", "product_bonferroni", "product_alpha05", "pca_only",
                         "raw_bonferroni") if n in result]
    keys = list(result["product"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(result[n][k]) for n in names) + " |")
    lat = result["latency"]
    lines += ["", f"Handler latency through TorchServe, concurrency 1, "
              f"{lat['requests_per_model']} requests each, interleaved: p50 with statistics "
              f"{lat['stats_on_p50_ms']} ms, without {lat['drift_off_p50_ms']} ms "
              f"(overhead {100 * lat['overhead_p50']:+.1f} %); p95 {lat['stats_on_p95_ms']} vs "
              f"{lat['drift_off_p95_ms']} ms."]
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG", file=sys.stderr)
        return
    t = result["timeline"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t["requests"], t["max_ks"], label="max KS distance (last 200 requests)")
    ax.axhline(result["settings"]["drift"]["min_effect"], ls="--", c="gray",
               label="effect floor")
    ax.axvline(t["switch_at"], c="red", ls=":", label="nyt -> tweets")
    fired = [x for x, f in zip(t["requests"], t["is_drift"]) if f]
    if fired:
        ax.scatter(fired, [1.02] * len(fired), marker="|", c="red", label="alarm")
    ax.set_xlabel("requests")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    atomic_savefig(fig, out / f"{stem}.png", dpi=120)


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--trials", type=int, default=20, help="streams per shifted scenario")
    p.add_argument("--windows", type=int, default=100, help="in-domain windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    result = run(args)
    write(result, Path(args.out), args.quick)
    print(json.dumps({k: result[k] for k in ("product", "raw_bonferroni", "latency")}, indent=1))


if __name__ == "__main__":
    main()
