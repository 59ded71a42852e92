"""`trainer drift`: has the served model's traffic drifted from its training reference?"""

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import requests

from handlers.bins import BINS, bin_counts, bin_edges, binned_test
from handlers.drift import DriftSettings, drift_test
from handlers.features import REFERENCE_FILE, Reference
from handlers.stats import acknowledge, merge_windows
from trainer.common.errors import DataError, SettingsError
from trainer.ops.client import TorchServeClient, add_server_arguments, client_from_args
from trainer.ops.freeze import archive_reference, freeze_served

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


def served_stats(client: TorchServeClient, model: str, version: str | None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(handler metadata, statistics) from the customized describe."""
    described = client.describe(model, version, customized=True)
    meta = described[0].get("customizedMetadata") or {}
    stats = meta.get("stats") if isinstance(meta, dict) else None
    if not stats:
        raise DataError(f"model {model!r} reports no traffic statistics (monitor off, or an "
                         "archive without drift_reference.json)")
    return meta, stats


def from_server(client: TorchServeClient, model: str, version: str | None) -> dict[str, Any]:
    """The handler merges every worker's window and runs the test on describe."""
    meta, stats = served_stats(client, model, version)
    return {**stats["drift"], "model": model, "version": meta.get("version"),
            "workers": stats["workers"], "requests_seen": stats["requests_seen"]}


def from_stats_dir(stats_dir: Path, reference_path: Path, settings: DriftSettings,
                   capacity: int) -> dict[str, Any]:
    """Offline: merge the persisted windows of one model version and test them here."""
    reference = load_reference(reference_path)
    merged = merge_windows(stats_dir, capacity)
    if merged["workers"] and merged["names"] != reference.names:
        raise DataError(f"{stats_dir}: window features {merged['names']} do not match the "
                         f"reference's {reference.names}")
    window = {"classes": merged["classes"],
              "features": {n: merged["features"][:, i] for i, n in enumerate(merged["names"])}}
    result = drift_test(reference.as_test_input(), window, settings)
    return {**result, "workers": merged["workers"], "requests_seen": merged["seen"],
            "reference_domains": reference.domain_sizes()}


DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")


def prometheus_vector(url: str, query: str) -> list[dict[str, Any]]:
    """An instant query's samples, or a DataError saying what went wrong and where."""
    try:
        resp = requests.get(url.rstrip("/") + "/api/v1/query", params={"query": query},
                            timeout=30)
        body = resp.json()
    except (requests.RequestException, ValueError) as e:
        raise DataError(f"Prometheus at {url}: {e}") from None
    if resp.status_code != 200 or body.get("status") != "success":
        raise DataError(f"Prometheus at {url} refused {query!r}: {body.get('error', resp.text)}")
    return body["data"]["result"]


def from_prometheus(url: str, model: str, reference_path: Path, settings: DriftSettings,
                    window: str, instance: str | None = None) -> dict[str, Any]:
    """Every replica's traffic: the reference-decile counts Prometheus summed over all the
    scrape targets serving `model` (or one `instance`) during the last `window`."""
    if not DURATION.match(window):
        raise SettingsError(f"--range must be a Prometheus duration like 15m or 2h, got {window!r}")
    reference = load_reference(reference_path)
    selector = f'ModelName="{model}"' + (f',instance="{instance}"' if instance else "")
    series = prometheus_vector(url, f"sum by (Feature, Bin) "
                                    f"(increase(DriftFeatureBin{{{selector}}}[{window}]))")
    if not series:
        raise DataError(f"Prometheus at {url} has no DriftFeatureBin series for {selector} "
                         "(is it scraping TorchServe's metrics port, with metrics.yaml?)")
    names = reference.names
    counts = np.zeros((len(names), BINS))
    for s in series:
        feature, b = s["metric"].get("Feature"), int(s["metric"].get("Bin", -1))
        if feature not in names or not 0 <= b < BINS:
            raise DataError(f"Prometheus series Feature={feature!r} Bin={b} does not match the "
                             f"reference {reference_path} (features {names})")
        counts[names.index(feature), b] = float(s["value"][1])
    classes = np.zeros(len(reference.labels))
    for s in prometheus_vector(url, f"sum by (Label) "
                                    f"(increase(DriftPredictedClass{{{selector}}}[{window}]))"):
        if s["metric"].get("Label") in reference.labels:
            classes[reference.labels.index(s["metric"]["Label"])] = float(s["value"][1])
    replicas = prometheus_vector(url, f"count(count by (instance) "
                                      f"(DriftFeatureBin{{{selector}}}))")
    result = binned_test(names, bin_counts(reference.features, bin_edges(reference.features)),
                         counts, np.bincount(reference.classes, minlength=len(reference.labels)),
                         classes, settings)
    return {**result, "model": model, "range": window, "prometheus": url,
            "replicas": int(float(replicas[0]["value"][1])) if replicas else 0}


def load_reference(path: Path) -> Reference:
    return Reference.load(path / REFERENCE_FILE if path.is_dir() else path)


def summary_line(result: dict[str, Any]) -> str:
    verdict = "DRIFT" if result["is_drift"] else "no drift"
    why = result["rule"] or ("window too small" if result["not_enough_requests"] else "")
    mix = result.get("served_mix") or {}  # absent from servers running an older handler
    served = f", served mix {', '.join(f'{d} {s:.0%}' for d, s in mix.items())}" \
        if len(mix) > 1 else ""
    ks = f", max KS {result['max_ks']:.3f}" if "max_ks" in result else ""
    replicas = f" of {result['replicas']} replicas" if "replicas" in result else ""
    return (f"{verdict}: window {result['window_size']} requests{replicas}{ks}{served}"
            + (f"; {why}" if why else ""))


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "drift", help="KS drift test of the served traffic; exit 0 no drift, 1 drift, 2 error")
    p.add_argument("--model", help="model name in TorchServe (asks the server)")
    p.add_argument("--version", help="model version (default: the default version)")
    add_server_arguments(p, inference=False)
    p.add_argument("--stats-dir", help="instead of the server: a version's stats directory")
    p.add_argument("--prometheus", metavar="URL",
                   help="instead of one server: the counts Prometheus summed over every replica "
                        "serving --model (needs --reference)")
    p.add_argument("--range", default="15m",
                   help="with --prometheus: the traffic of this last duration (default: 15m)")
    p.add_argument("--instance", help="with --prometheus: only this scrape target (host:port)")
    p.add_argument("--reference",
                   help="with --stats-dir or --prometheus: run dir or drift_reference.json")
    p.add_argument("--window", type=int, default=2000, help="with --stats-dir: newest requests")
    defaults = DriftSettings()
    p.add_argument("--ert", type=int, default=defaults.ert,
                   help="with --stats-dir or --prometheus: in-domain requests expected before "
                        f"a false alarm (default: {defaults.ert})")
    p.add_argument("--check-every", type=int, default=defaults.check_every,
                   help="with --stats-dir or --prometheus: requests between the checks you run "
                        f"(default: {defaults.check_every})")
    p.add_argument("--min-effect", type=float, default=defaults.min_effect,
                   help=f"KS distance floor (default: {defaults.min_effect})")
    p.add_argument("--min-window", type=int, default=defaults.min_window,
                   help=f"requests needed to fire (default: {defaults.min_window})")
    p.add_argument("--correction", default=defaults.correction, help="bonferroni | bh")
    p.add_argument("--ack", action="store_true",
                   help="acknowledge the current alarm instead of testing: the version's "
                        "windows restart from the next request (on the server host; sample "
                        "the captured texts first, they restart too)")
    p.add_argument("--freeze-reference", action="store_true",
                   help="instead of testing: freeze the newest --requests served requests of "
                        "--model as its drift reference (on the server host), kept in "
                        "--model-store beside the archive; refused if the current reference "
                        "flags them, unless --confirm-in-domain")
    p.add_argument("--requests", type=int, default=5000,
                   help="with --freeze-reference: requests to freeze (default: 5000)")
    p.add_argument("--confirm-in-domain", action="store_true",
                   help="with --freeze-reference: the traffic is what this version should "
                        "serve, even where the current reference flags it")
    p.add_argument("--model-store", default="model_store",
                   help="with --freeze-reference: where NAME.vN.mar is (default: model_store)")
    p.add_argument("--sign-key", type=Path,
                   help="with --freeze-reference: Ed25519 private key (trainer keygen) to sign "
                        "its manifest; needed where the server trusts keys")
    p.set_defaults(func=run)


def freeze_command(args: argparse.Namespace, settings: DriftSettings) -> dict[str, Any]:
    if not args.model or args.stats_dir or args.prometheus:
        raise SettingsError("--freeze-reference needs --model (the server's statistics, on "
                            "its host), not --stats-dir or --prometheus")
    client = client_from_args(args)
    meta, stats = served_stats(client, args.model, args.version)
    stats_dir, version = Path(stats.get("stats_dir") or ""), meta.get("version")
    if not stats_dir.is_dir():
        raise DataError(f"{stats_dir}: the statistics of {args.model} are not on this host; run "
                        "`trainer drift --freeze-reference` where TorchServe runs")
    mar = Path(args.model_store) / Path(client.describe(args.model, version)[0]["modelUrl"]).name
    where = f"{args.model} v{version}"
    result = freeze_served(stats_dir, archive_reference(mar), args.requests,
                           args.confirm_in_domain, settings,
                           mar.with_name(mar.name.removesuffix(".mar") + ".reference"),
                           args.sign_key, where)
    print(f"froze {result['frozen_requests']} served requests of {where} as its drift "
          f"reference ({result['store']}); each worker adopts it within a second",
          file=sys.stderr)
    return {"model": args.model, "version": version, **result}


def acknowledge_served(client: TorchServeClient, model: str, version: str | None) -> dict[str, Any]:
    """`drift --ack` against a server: its statistics directory must be on this host."""
    meta, stats = served_stats(client, model, version)
    directory = Path(stats.get("stats_dir") or "")
    if not directory.is_dir():
        raise DataError(f"{directory}: the statistics of {model} are not on this host; run "
                        "`trainer drift --ack` where TorchServe runs, or pass --stats-dir")
    return {"model": model, "version": meta.get("version"), **acknowledge_dir(directory)}


def acknowledge_dir(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise DataError(f"--stats-dir {directory}: no such directory")
    return {"acknowledged_at": acknowledge(directory), "stats_dir": str(directory)}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    settings = DriftSettings(args.ert, args.check_every, args.min_effect, args.min_window,
                             args.correction)
    if args.freeze_reference:
        return freeze_command(args, settings), 0
    if args.ack:
        if args.prometheus or not (args.model or args.stats_dir):
            raise SettingsError("--ack needs --model (ask the server on its host) or "
                                "--stats-dir: each server keeps its own windows")
        result = (acknowledge_dir(Path(args.stats_dir)) if args.stats_dir else
                  acknowledge_served(client_from_args(args), args.model, args.version))
        print(f"acknowledged: the windows in {result['stats_dir']} count only requests from "
              "now on; each worker restarts its window within a second", file=sys.stderr)
        return result, 0
    for flag in ("stats_dir", "prometheus"):
        if getattr(args, flag) and not args.reference:
            raise SettingsError(f"--{flag.replace('_', '-')} needs --reference (a run dir or "
                                "drift_reference.json)")
    if args.stats_dir:
        result = from_stats_dir(Path(args.stats_dir), Path(args.reference), settings.validate(),
                                args.window)
    elif args.prometheus:
        if not args.model:
            raise SettingsError("--prometheus needs --model (its ModelName in the metrics)")
        result = from_prometheus(args.prometheus, args.model, Path(args.reference),
                                 settings.validate(), args.range, args.instance)
    elif args.model:
        client = client_from_args(args)
        result = from_server(client, args.model, args.version)
    else:
        raise SettingsError("give --model (ask TorchServe) or --stats-dir with --reference")
    print(summary_line(result), file=sys.stderr)
    return result, EXIT_DRIFT if result["is_drift"] else EXIT_NO_DRIFT
