"""`trainer drift`: has the served model's traffic drifted from its training reference?"""

import argparse
import sys
from pathlib import Path
from typing import Any

from handlers.drift import DriftSettings, drift_test
from handlers.features import REFERENCE_FILE, Reference
from handlers.stats import merge_windows
from trainer.client import TorchServeClient
from trainer.config import SettingsError
from trainer.data import DataError

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
    if reference_path.is_dir():
        reference_path = reference_path / REFERENCE_FILE
    reference = Reference.load(reference_path)
    merged = merge_windows(stats_dir, capacity)
    if merged["workers"] and merged["names"] != reference.names:
        raise DataError(f"{stats_dir}: window features {merged['names']} do not match the "
                         f"reference's {reference.names}")
    window = {"classes": merged["classes"],
              "features": {n: merged["features"][:, i] for i, n in enumerate(merged["names"])}}
    result = drift_test(reference.as_test_input(), window, settings)
    return {**result, "workers": merged["workers"], "requests_seen": merged["seen"],
            "reference_domains": reference.domain_sizes()}


def summary_line(result: dict[str, Any]) -> str:
    verdict = "DRIFT" if result["is_drift"] else "no drift"
    why = result["rule"] or ("window too small" if result["not_enough_requests"] else "—")
    mix = result.get("served_mix") or {}  # absent from servers running an older handler
    served = f", served mix {', '.join(f'{d} {s:.0%}' for d, s in mix.items())}" \
        if len(mix) > 1 else ""
    return (f"{verdict}: window {result['window_size']} requests, max KS "
            f"{result['max_ks']:.3f}{served}; {why}")


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "drift", help="KS drift test of the served traffic; exit 0 no drift, 1 drift, 2 error")
    p.add_argument("--model", help="model name in TorchServe (asks the server)")
    p.add_argument("--version", help="model version (default: the default version)")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--key-file", default="key_file.json",
                   help="TorchServe's key_file.json (written in its working directory)")
    p.add_argument("--stats-dir", help="instead of the server: a version's stats directory")
    p.add_argument("--reference", help="with --stats-dir: run dir or drift_reference.json")
    p.add_argument("--window", type=int, default=2000, help="with --stats-dir: newest requests")
    defaults = DriftSettings()
    p.add_argument("--alpha", type=float, default=defaults.alpha,
                   help=f"with --stats-dir (default: {defaults.alpha})")
    p.add_argument("--min-effect", type=float, default=defaults.min_effect,
                   help=f"KS distance floor (default: {defaults.min_effect})")
    p.add_argument("--min-window", type=int, default=defaults.min_window,
                   help=f"requests needed to fire (default: {defaults.min_window})")
    p.add_argument("--correction", default=defaults.correction, help="bonferroni | bh")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    if args.stats_dir:
        if not args.reference:
            raise SettingsError("--stats-dir needs --reference (a run dir or drift_reference.json)")
        settings = DriftSettings(args.alpha, args.min_effect, args.min_window,
                                 args.correction).validate()
        result = from_stats_dir(Path(args.stats_dir), Path(args.reference), settings,
                                args.window)
    elif args.model:
        client = TorchServeClient(args.management_url, args.management_url, Path(args.key_file))
        result = from_server(client, args.model, args.version)
    else:
        raise SettingsError("give --model (ask TorchServe) or --stats-dir with --reference")
    print(summary_line(result), file=sys.stderr)
    return result, EXIT_DRIFT if result["is_drift"] else EXIT_NO_DRIFT
