"""`trainer sample`: N served texts for a labeller, picked by herding on the served features.

Workers capture the texts of their newest requests when the archive says `--capture N`. This
verb merges every worker's capture and picks the N texts whose features best match the
captured traffic's mean (herding, as for replay exemplars), so the labeller sees what the new
traffic looks like, not its most frequent sentence. Each row carries the served label and
confidence as a hint and an empty "label" to fill in; `trainer adapt --data FILE` takes the
labelled file back (a row whose label is still empty stops it, naming the line).
"""

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.stats import captured
from trainer.artifacts import atomic_write_bytes
from trainer.client import TorchServeClient, add_server_arguments, client_from_args
from trainer.drift_cli import served_stats
from trainer.errors import ClientError, DataError, SettingsError
from trainer.herding import herding_order


def stats_dir_of(client: TorchServeClient, model: str, version: str | None) -> tuple[Path, list]:
    """Where the version's workers keep their windows, from its describe (same host only)."""
    try:
        meta, stats = served_stats(client, model, version)
    except ClientError as e:
        if e.status != 404:  # an authorization failure or a server error says so itself
            raise
        raise DataError(f"model {model!r}{f' v{version}' if version else ''} is not registered "
                        f"on {client.management_url} ({e})") from e
    if not stats.get("capture_per_worker"):
        raise DataError(f"capture is off for {model} v{meta.get('version')}: archive it with "
                        "`trainer archive --capture N` to keep texts for labelling")
    return Path(stats["stats_dir"]), meta["labels"]


def pick(traffic: dict[str, Any], n: int, labels: list[str]) -> list[dict[str, Any]]:
    have = len(traffic["texts"])
    if n < 1:
        raise SettingsError(f"--n must be >= 1, got {n}")
    if n > have:
        raise DataError(f"only {have} texts are captured; ask for at most {have} (--n)")
    pcs = [i for i, name in enumerate(traffic["names"]) if name.startswith("pc")]
    order = herding_order(torch.from_numpy(np.ascontiguousarray(traffic["features"][:, pcs])), n)
    conf = traffic["names"].index("confidence")
    return [{"text": traffic["texts"][i], "label": "",
             "predicted": labels[int(traffic["classes"][i])],
             "confidence": round(float(traffic["features"][i, conf]), 4)}
            for i in order.tolist()]


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                    for r in rows).encode())


def sample_served(client: TorchServeClient, model: str, version: str | None,
                  n: int) -> tuple[list[dict[str, Any]], int]:
    """(N rows to label, texts captured) from a version served on this host."""
    directory, labels = stats_dir_of(client, model, version)
    if not directory.is_dir():
        raise DataError(f"{directory}: the server's statistics are not on this host; run "
                        "`trainer sample` where TorchServe runs, or copy the directory "
                        "and pass --stats-dir")
    traffic = captured(directory)
    return pick(traffic, n, labels), len(traffic["texts"])


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    if args.stats_dir:
        directory, labels = Path(args.stats_dir), args.labels.split(",")
        if not directory.is_dir():
            raise FileNotFoundError(f"--stats-dir {directory}: no such directory")
        traffic = captured(directory)
        rows, have = pick(traffic, args.n, labels), len(traffic["texts"])
    else:
        rows, have = sample_served(client_from_args(args), args.model, args.version, args.n)
    out = Path(args.out)
    write_rows(out, rows)
    counts = Counter(r["predicted"] for r in rows)
    return {"out": str(out), "rows": len(rows), "captured": have,
            "predicted": dict(sorted(counts.items()))}, 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("sample", help="N captured texts of the served traffic to label "
                                        "(herding on the served features)")
    p.add_argument("--model", help="model name in TorchServe")
    p.add_argument("--version", help="version (default: the default version)")
    p.add_argument("--n", type=int, default=200, help="rows to write (default: 200)")
    p.add_argument("--out", required=True, help="JSONL to write: text, label (empty), "
                                                "predicted, confidence")
    add_server_arguments(p)
    p.add_argument("--stats-dir", help="instead of the server: a version's stats directory")
    p.add_argument("--labels", default="negative,neutral,positive",
                   help="with --stats-dir: the model's labels in class order")

    def checked(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
        if not args.stats_dir and not args.model:
            raise SettingsError("give --model (ask TorchServe) or --stats-dir")
        return run(args)

    p.set_defaults(func=checked)
