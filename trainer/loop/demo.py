"""`trainer demo`: train on nyt, archive, serve through the real TorchServe, score every domain."""

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.common import config
from trainer.common.artifacts import atomic_write_json
from trainer.common.config import setting
from trainer.data.sources import DOMAINS, Example, load_source
from trainer.learning.train import TrainSettings, run_train
from trainer.model.evaluate import scores
from trainer.ops.client import TorchServeClient
from trainer.ops.holdout import ask_all
from trainer.ops.latency import median_p95_ms
from trainer.ops.server import TorchServe
from trainer.packaging.archive import ArchiveSettings, build_archive


@dataclass
class DemoSettings:
    name: str = setting("sentiment", "model name in TorchServe")
    source: str = setting("nyt", "domain (or data file) the first version is trained on")
    per_domain: int = setting(300, "test sentences sent per domain (0 = the whole test split)")
    concurrency: int = setting(4, "client threads sending requests")
    runs: str = setting("runs", "where run directories go")
    model_store: str = setting("model_store", "TorchServe's model store")
    config: str = setting("config.properties", "TorchServe config to start with")
    free_ports: bool = setting(False, "pick free loopback ports instead of the config's")
    allow_weak: bool = setting(False, "archive and roll out runs marked weak (no better than "
                                      "the majority class); for quick smoke runs")


def domain_table(results: dict[str, dict[str, Any]]) -> str:
    head = f"{'domain':<8} {'requests':>8} {'errors':>6} {'accuracy':>8} {'macro-F1':>8} " \
           f"{'p50 ms':>7} {'p95 ms':>7}"
    rows = [head, "-" * len(head)]
    for domain, r in results.items():
        rows.append(f"{domain:<8} {r['requests']:>8} {r['errors']:>6} {r['accuracy']:>8.3f} "
                    f"{r['macro_f1']:>8.3f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}")
    return "\n".join(rows)


def prepare_v1(demo: DemoSettings, train: TrainSettings,
               archive: ArchiveSettings) -> tuple[Path, dict, Path]:
    """Train (or reuse) v1 on the source domain and archive it (or reuse the archive)."""
    run_dir = Path(demo.runs) / demo.name / "v1"
    report = run_train(train, demo.source, run_dir, reuse=True)
    mar = build_archive(run_dir, demo.name, "1", Path(demo.model_store), archive, reuse=True,
                        allow_weak=demo.allow_weak)
    return run_dir, report, mar


def demo_tests(labels: list[str], train: TrainSettings, per_domain: int
               ) -> dict[str, list[Example]]:
    tests = {}
    for domain in DOMAINS:
        test = load_source(domain, train.seed, train.label_threshold, tuple(labels))[domain].test
        if per_domain and len(test) > per_domain:
            test = random.Random(train.seed).sample(test, per_domain)
        tests[domain] = test
    return tests


def score_domain(client: TorchServeClient, model: str, test: list[Example], labels: list[str],
                 concurrency: int) -> dict[str, Any]:
    """Send a domain's labelled sentences through the inference API and score the answers."""
    answers = ask_all(client, model, [(None, ex.text) for ex in test], concurrency)
    ok = [(ex, a) for ex, (a, _) in zip(test, answers) if a is not None]
    index = {label: i for i, label in enumerate(labels)}
    s = scores([index[ex.label] for ex, _ in ok], [index[a] for _, a in ok], labels)
    latencies = [ms for _, ms in answers]
    return {"requests": len(test), "errors": len(test) - len(ok), "accuracy": s["accuracy"],
            "macro_f1": s["macro_f1"], "per_class_f1": s["per_class_f1"],
            **median_p95_ms(latencies)}


def print_table(results: dict[str, dict[str, Any]], source: str) -> None:
    print("\n" + domain_table(results), file=sys.stderr)
    if source in results:
        print(f"change vs {source}: " + ", ".join(
            f"{d} accuracy {r['accuracy'] - results[source]['accuracy']:+.3f} macro-F1 "
            f"{r['macro_f1'] - results[source]['macro_f1']:+.3f}"
            for d, r in results.items() if d != source), file=sys.stderr)


def serve(demo: DemoSettings) -> TorchServe:
    return TorchServe(Path(demo.runs) / ".torchserve", Path(demo.model_store), Path(demo.config),
                      ports="free" if demo.free_ports else None)


def run_demo(demo: DemoSettings, train: TrainSettings, archive: ArchiveSettings) -> dict:
    started = time.time()
    _, report, mar = prepare_v1(demo, train, archive)
    labels = report["labels"]
    tests = demo_tests(labels, train, demo.per_domain)
    with serve(demo) as server:
        client = TorchServeClient(server.inference_url, server.management_url, server.key_file)
        print(f"registering {mar.name} (token authorization on)", file=sys.stderr)
        client.register(mar.name, demo.name, workers=archive.min_workers)
        results = {d: score_domain(client, demo.name, t, labels, demo.concurrency)
                   for d, t in tests.items()}
    summary = {"model": demo.name, "version": "1", "trained_on": demo.source, "mar": str(mar),
               "domains": results, "wall_time_s": round(time.time() - started, 1)}
    print_table(results, demo.source)
    out = Path(demo.runs) / demo.name / "demo.json"
    atomic_write_json(out, summary, sort_keys=False)
    return summary


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `demo` and `loop` share: the demo's, training's, and the archive's as --serve-*."""
    config.add_arguments(p, DemoSettings)
    config.add_arguments(p, TrainSettings)
    config.add_arguments(p, ArchiveSettings, prefix="serve_")


def demo_settings(args: argparse.Namespace
                  ) -> tuple[DemoSettings, TrainSettings, ArchiveSettings]:
    return (config.from_args(DemoSettings, args), config.from_args(TrainSettings, args),
            config.from_args(ArchiveSettings, args, prefix="serve_"))


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("demo", help="train on nyt, serve it in TorchServe, score all domains")
    add_demo_arguments(p)
    p.set_defaults(func=lambda args: (run_demo(*demo_settings(args)), 0))
