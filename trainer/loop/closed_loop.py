"""`trainer loop`: the closed loop. Serve v1, replay the next domain's traffic until the drift
monitor fires, sample the captured traffic for a labeller (the data set's labels stand in),
adapt with that labelled file, archive, roll out; repeat."""

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from handlers.runtime import RuntimeSettings
from trainer.common import config
from trainer.common.artifacts import atomic_savefig, atomic_write_json, atomic_write_text
from trainer.common.config import check, setting
from trainer.data.sources import DOMAINS, load_examples, load_source
from trainer.learning.adapt import AdaptSettings, run_adapt
from trainer.learning.train import TrainSettings
from trainer.loop.demo import (
    DemoSettings,
    add_demo_arguments,
    demo_settings,
    demo_tests,
    prepare_v1,
    print_table,
    score_domain,
    serve,
)
from trainer.ops.client import TorchServeClient
from trainer.ops.drift_cli import acknowledge_served, from_server
from trainer.ops.rollout import GateSettings, rollout
from trainer.ops.sample import sample_served, write_rows
from trainer.packaging.archive import ArchiveSettings, build_archive

PERSIST_S = RuntimeSettings().persist_every_s + 0.5  # until every worker has written its window


@dataclass
class LoopSettings:
    stream: list[str] = setting(["movie", "amazon", "tweets"], "domains arriving after the source")
    label: int = setting(96, "captured texts picked (trainer sample) for labelling after an "
                             "alarm; the data set's labels stand in for the labeller")
    unlabelled: bool = setting(True, "also give adapt the captured texts not picked for "
                                     "labelling (--unlabelled: self-training); on validation it "
                                     "changed 15-30 % fewer old answers for about the same "
                                     "gain (bench/results/distill-sweep*.md)")
    collect: int = setting(300, "requests of the new domain replayed (the alarm's included) "
                                "before sampling; the archive captures this many per worker")
    warmup: int = setting(100, "requests of the served version's own domain before each switch")
    check_every: int = setting(25, "requests between drift checks")
    max_traffic: int = setting(400, "requests replayed per domain before giving up on an alarm")
    holdout: int = setting(1000, "labelled test sentences per domain in the rollout gate (the "
                                 "test split caps it)")
    report_dir: str = setting("runs/loop", "where the step table goes (JSON, Markdown, PNG)")

    def validate(self) -> None:
        problems = [f"{n} must be >= 1, got {getattr(self, n)}"
                    for n in ("label", "collect", "check_every", "max_traffic", "holdout")
                    if getattr(self, n) < 1]
        if self.collect < self.label:
            problems.append(f"collect ({self.collect}) must be >= label ({self.label}): only "
                            "captured texts can be picked")
        if not self.stream:
            problems.append("stream must name at least one domain")
        check(problems, "loop settings")


def traffic_of(domain: str, seed: int, part: str) -> list[str]:
    """A domain's sentences of one split in a seeded random order: the replayed production
    traffic. New domains arrive from their train split, so the gate's test split stays unseen
    by the labeller; the served version's own domain from its test split, which it never saw."""
    texts = [e.text for e in getattr(load_source(domain, seed)[domain], part)]
    random.Random(seed).shuffle(texts)
    return texts


def replay_until_drift(client: TorchServeClient, model: str, texts: list[str],
                       every: int) -> tuple[int | None, dict[str, Any]]:
    """Send traffic in chunks; after each chunk ask the served model whether it drifted."""
    result: dict[str, Any] = {}
    for start in range(0, len(texts), every):
        for text in texts[start:start + every]:
            client.predict(model, text)
        result = from_server(client, model, None)
        if result["is_drift"]:
            return start + len(texts[start:start + every]), result
    return None, result


def label_from_truth(rows: list[dict[str, Any]], domain: str,
                     truth: dict[str, str]) -> list[dict[str, Any]]:
    """Stand-in for the labeller: each sampled row gets its data set label, and the new
    domain's name so adapt learns it as one domain. A text the data set lacks is left out."""
    return [{"text": r["text"], "label": truth[r["text"]], "domain": domain}
            for r in rows if r["text"] in truth]


def ground_truth(threshold: float) -> dict[str, str]:
    return {ex.text: ex.label for d in DOMAINS for ex in load_examples(d, threshold)}


def label_captured(client: TorchServeClient, model: str, domain: str, n: int,
                   truth: dict[str, str], out: Path, model_store: Path,
                   threshold: float) -> dict[str, Any]:
    """`trainer sample` then the labeller: N texts of the drifted traffic, labelled. Also
    measured: the share of the picks that really are the new domain's."""
    time.sleep(PERSIST_S)  # every worker writes its window (and capture) once a second
    rows, how = sample_served(client, model, None, n, model_store=model_store)
    write_rows(out / "to_label.jsonl", rows)
    write_rows(out / "unlabelled.jsonl", [{"text": t} for t in how["unpicked"]])
    labelled = label_from_truth(rows, domain, truth)
    write_rows(out / "labelled.jsonl", labelled)
    new_texts = {ex.text for ex in load_examples(domain, threshold)}
    return {"captured": how["captured"], "sampled": len(rows), "labelled": len(labelled),
            "labelled_file": str(out / "labelled.jsonl"), "unpicked": len(how["unpicked"]),
            "unlabelled_file": str(out / "unlabelled.jsonl"), "predicted": how["predicted"],
            "new_domain_share": round(sum(r["text"] in new_texts for r in rows) / len(rows), 4),
            "labels": dict(sorted(Counter(r["label"] for r in labelled).items()))}


def run_loop(loop: LoopSettings, demo: DemoSettings, train: TrainSettings,
             archive: ArchiveSettings, adapt: AdaptSettings | None = None) -> dict[str, Any]:
    """`adapt` (default: `trainer adapt`'s defaults) is each step's recipe; its max_eval caps
    the test sentences each domain is scored on, in adapt and in the gate."""
    adapt = adapt or AdaptSettings()
    started = time.time()
    archive = replace(archive, capture=max(archive.capture, loop.collect))  # for trainer sample
    run_dir, report, mar = prepare_v1(demo, train, archive)
    labels, name = report["labels"], demo.name
    steps: list[dict[str, Any]] = []
    gate = GateSettings(holdout=loop.holdout)
    truth = ground_truth(train.label_threshold)  # the stand-in labeller's answers, read once
    with serve(demo) as server:
        client = TorchServeClient(server.inference_url, server.management_url, server.key_file)
        client.register(mar.name, name, workers=archive.min_workers)
        tests = demo_tests(labels, train, demo.per_domain)
        first = {d: score_domain(client, name, t, labels, demo.concurrency)
                 for d, t in tests.items()}
        print_table(first, demo.source)
        current, version, serving = run_dir, 1, demo.source
        latest = 1  # every candidate gets its own number, kept or not: nothing is overwritten
        for domain in loop.stream:
            t0 = time.time()
            for text in traffic_of(serving, train.seed, "test")[:loop.warmup]:
                client.predict(name, text)  # the served version's own domain: no alarm expected
            before = from_server(client, name, None)
            arriving = traffic_of(domain, train.seed, "train")
            delay, drift = replay_until_drift(client, name, arriving[:loop.max_traffic],
                                              loop.check_every)
            step: dict[str, Any] = {"domain": domain, "drift_after_requests": delay,
                                    "drift_rule": drift.get("rule", ""), "from_version": version,
                                    "warmup_domain": serving,
                                    "false_alarm_before_switch": before["is_drift"]}
            print(f"{domain}: " + (f"drift after {delay} requests ({drift['rule']})" if delay
                                   else f"no drift in {loop.max_traffic} requests"),
                  file=sys.stderr)
            if delay is not None:
                for text in arriving[delay:loop.collect]:
                    client.predict(name, text)  # more of the new traffic, for the labeller
                latest += 1
                out = Path(demo.runs) / name / f"v{latest}"
                step["labelling"] = label_captured(
                    client, name, domain, loop.label, truth,
                    Path(loop.report_dir) / f"step{len(steps) + 1}", Path(demo.model_store),
                    train.label_threshold)
                run_adapt(adapt, current, step["labelling"]["labelled_file"], out,
                          test_data=domain, unlabelled=step["labelling"]["unlabelled_file"]
                          if loop.unlabelled and step["labelling"]["unpicked"] else None)
                new_mar = build_archive(out, name, str(latest), Path(demo.model_store),
                                        archive, allow_weak=demo.allow_weak)
                result = rollout(client, new_mar, name, gate, demo.allow_weak,
                                 labeller=lambda _, texts: {t: truth[t] for t in texts
                                                            if t in truth})
                step.update({"to_version": latest, "promoted": result["promoted"],
                             "outcome": result["outcome"], "rules": result["rules"],
                             "before": {d: r["accuracy"] for d, r in result["old"].items()},
                             "after": {d: r["accuracy"] for d, r in result["new"].items()},
                             "churn": result["churn"],
                             "gate_labels": sum((result["labels_answered"] or {}).values())})
                if result["promoted"]:  # the new version's windows start empty
                    current, version, serving = out, latest, domain
                else:  # the operator saw this alarm: the next must come from later traffic
                    step["acknowledged"] = bool(acknowledge_served(client, name, None))
            step["serving_after"] = version
            step["seconds"] = round(time.time() - t0, 1)
            steps.append(step)
        # the outcome a user sees: what serves now, on the texts the first version was scored on
        last = {d: score_domain(client, name, t, labels, demo.concurrency)
                for d, t in tests.items()}
    summary = {"model": name, "source": demo.source, "first_version": first, "steps": steps,
               "final_version": version, "final_scores": last,
               "settings": {"loop": asdict(loop), "demo": asdict(demo)},
               "wall_time_s": round(time.time() - started, 1)}
    write_report(summary, Path(loop.report_dir))
    return summary


def step_table(summary: dict[str, Any]) -> str:
    rows = ["| step | domain | alarm before switch | drift after (requests) | labels used "
            "(per class) + unlabelled | gate | serving after | accuracy before → after (gate's "
            "test texts) | new-domain gain (points) | old domains: answers changed / right → "
            "wrong | gate labels | s |",
            "|---|---|---|---|---|---|---|---|---:|---|---:|---:|"]
    for i, s in enumerate(summary["steps"], start=1):
        how = s.get("labelling")
        used = (f"{how['labelled']} ({', '.join(f'{k} {n}' for k, n in how['labels'].items())}) + "
                f"{how['unpicked'] if summary['settings']['loop']['unlabelled'] else 0}"
                if how else "—")
        d = s["domain"]
        gain = (f"{100 * (s['after'][d] - s['before'][d]):+.1f}"
                if s.get("after", {}).get(d) is not None and s["before"].get(d) is not None
                else "—")
        acc = ", ".join(f"{d} {s['before'][d]:.3f}→{s['after'][d]:.3f}"
                        for d in s.get("after", {}) if s["after"][d] is not None)
        gate = (f"{s.get('outcome', 'promoted' if s.get('promoted') else 'rejected')} "
                f"v{s['to_version']}" if "to_version" in s else "no adapt")
        churn = ", ".join(f"{d} {100 * c['test']['disagreement']:.1f} % / "
                          f"{100 * c['test']['negative_flip_rate']:.1f} %"
                          for d, c in (s.get("churn") or {}).items() if c.get("test"))
        rows.append(f"| {i} | {s['domain']} | {'yes' if s['false_alarm_before_switch'] else 'no'} "
                    f"| {s['drift_after_requests'] or 'none'} | {used} | {gate} | "
                    f"v{s.get('serving_after', s['from_version'])} | {acc or '—'} | {gain} | "
                    f"{churn or '—'} | {s.get('gate_labels', 0)} | {s['seconds']} |")
    return "\n".join(rows)


def outcome_table(summary: dict[str, Any]) -> str:
    """v1 against the version serving after the loop, on the same test texts of every domain."""
    first, last = summary["first_version"], summary["final_scores"]
    rows = [f"| domain | v1 accuracy | v{summary['final_version']} accuracy (serving) | change |",
            "|---|---:|---:|---:|"]
    for d in first:
        a, b = first[d]["accuracy"], last[d]["accuracy"]
        rows.append(f"| {d} | {a:.3f} | {b:.3f} | {100 * (b - a):+.1f} |")
    return "\n".join(rows)


def write_report(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "loop.json", summary, sort_keys=False)
    table = step_table(summary) + "\n\n" + outcome_table(summary)
    atomic_write_text(out / "loop.md", table + "\n")
    print("\n" + table, file=sys.stderr)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps = [s for s in summary["steps"] if "after" in s]
    domains = list(summary["first_version"])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for d in domains:
        xs = [0] + [i + 1 for i, s in enumerate(steps) if d in s["after"]]
        ys = [summary["first_version"][d]["accuracy"]] + [s["after"][d] for s in steps
                                                           if d in s["after"]]
        ax.plot(xs, ys, marker="o", label=d)
    ax.set_xlabel("adaptation step (candidate version on holdouts)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "loop.png", dpi=120)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("loop", help="closed loop: serve, detect drift, adapt, roll out; repeat")
    config.add_arguments(p, LoopSettings)
    add_demo_arguments(p)
    config.add_arguments(p, AdaptSettings, prefix="adapt_")
    p.set_defaults(func=lambda args: (run_loop(
        config.from_args(LoopSettings, args), *demo_settings(args),
        config.from_args(AdaptSettings, args, prefix="adapt_")), 0))
