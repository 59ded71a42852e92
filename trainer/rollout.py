"""`trainer rollout` / `trainer rollback`: register a new version next to the default, gate it on
labelled holdouts through its versioned URL, switch the default only when the gate passes."""

import argparse
import fcntl
import json
import os
import re
import statistics
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer import config
from trainer.client import ClientError, TorchServeClient
from trainer.config import check, setting
from trainer.data import Example, load_source
from trainer.evaluate_cli import test_splits
from trainer.quality import refuse_weak

EXIT_PROMOTED, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2
MAR_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_-]*)\.v(?P<version>[0-9]+(\.[0-9]+)*)\.mar$")


class RolloutError(ValueError):
    """A rollout that cannot start or continue; nothing further is changed on the server."""


@dataclass
class GateSettings:
    max_old_drop: float = setting(0.02, "largest accuracy drop allowed on any old domain")
    min_new_gain: float = setting(0.0, "new domain accuracy must beat the default's by more")
    max_error_rate: float = setting(0.0, "share of holdout requests allowed to fail")
    max_p95_ms: float = setting(1000.0, "p95 latency limit of the new version (ms)")
    holdout: int = setting(200, "labelled test sentences per domain sent to each version")
    concurrency: int = setting(4, "client threads for the holdout requests")
    keep: int = setting(3, "versions kept registered for rollback (default included)")
    workers: int = setting(1, "workers started for the new version")

    def validate(self) -> None:
        problems = []
        if not 0 <= self.max_old_drop <= 1:
            problems.append(f"max_old_drop must be in [0, 1], got {self.max_old_drop}")
        if not 0 <= self.max_error_rate <= 1:
            problems.append(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        for name in ("holdout", "concurrency", "keep", "workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_p95_ms <= 0:
            problems.append(f"max_p95_ms must be > 0, got {self.max_p95_ms}")
        check(problems, "gate settings")


def read_archive(mar: Path) -> dict[str, Any]:
    """Name, version and training report of a .mar, checked before the server is touched."""
    match = MAR_RE.match(mar.name)
    if not match:
        raise RolloutError(f"{mar.name}: archive names look like NAME.vN.mar")
    if not mar.is_file():
        raise RolloutError(f"{mar}: no such archive in the model store")
    try:
        with zipfile.ZipFile(mar) as z:
            bad = z.testzip()
            if bad:
                raise RolloutError(f"{mar}: corrupt archive (bad CRC in {bad})")
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
            report = json.loads(z.read("report.json"))
            model_config = yaml.safe_load(z.read("model-config.yaml"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise RolloutError(f"{mar}: not a usable model archive ({e})") from e
    version = str(manifest["model"]["modelVersion"])
    if version != match["version"]:
        raise RolloutError(f"{mar.name}: file name says v{match['version']} but the archive "
                           f"is version {version}")
    return {"name": match["name"], "version": version, "report": report,
            "config": model_config}


@contextmanager
def rollout_lock(model_store: Path, model: str) -> Iterator[Path]:
    """One rollout per model at a time. flock dies with its process, so a killed rollout never
    leaves the model locked; its state file tells the next run what to finish."""
    path = model_store / f".{model}.rollout.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise RolloutError(f"another rollout of {model!r} is in progress ({holder}); "
                               "wait for it to finish") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield model_store / f".{model}.rollout.state"
    finally:
        os.close(fd)


def versions(client: TorchServeClient, model: str) -> tuple[list[str], str | None]:
    """Registered versions (ascending) and the default one."""
    try:
        listed = client._call("management", "GET", f"/models/{model}/all")
    except ClientError as e:
        if e.status == 404:
            return [], None
        raise
    default = client.describe(model)[0]["modelVersion"]
    found = sorted({str(m["modelVersion"]) for m in listed}, key=_version_key)
    return found, str(default)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def holdouts(report: dict[str, Any], size: int) -> dict[str, list[Example]]:
    """Labelled test splits of every domain the new version was trained on (the same splits its
    report scored), the newest domain last."""
    labels = tuple(report["labels"])
    sources = report.get("domain_sources")
    if sources:
        order = report.get("domains_seen") or list(sources)
        splits = test_splits({d: sources[d] for d in order}, labels)
        return {d: splits[d][:size] for d in order}
    settings = report.get("settings", {})
    out = {}
    for domain in report.get("domains") or []:
        out[domain] = load_source(domain, settings.get("seed", 0),
                                  settings.get("label_threshold", 0.5), labels)[domain].test[:size]
    if not out:
        raise RolloutError("the archive's report names no domains to hold out")
    return out


def score(client: TorchServeClient, model: str, version: str, examples: list[Example],
          concurrency: int) -> dict[str, Any]:
    def one(ex: Example) -> tuple[bool | None, float]:
        start = time.perf_counter()
        try:
            label = client.predict(model, ex.text, version=version, evaluation=True)["label"]
            ok = label == ex.label
        except ClientError:
            ok = None
        return ok, 1000 * (time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, examples))
    errors = sum(ok is None for ok, _ in answers)
    latencies = sorted(ms for _, ms in answers)
    return {"n": len(examples), "accuracy": round(sum(bool(ok) for ok, _ in answers) /
                                                  max(1, len(examples)), 4),
            "errors": errors, "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2)}


def gate(old: dict[str, dict], new: dict[str, dict], new_domain: str,
         g: GateSettings) -> tuple[bool, list[str]]:
    """Every rule with its verdict, so a rejected rollout says exactly why."""
    rules = []
    for domain in new:
        if domain == new_domain:
            ok = new[domain]["accuracy"] > old[domain]["accuracy"] + g.min_new_gain
            rules.append((ok, f"{domain} (new): {new[domain]['accuracy']:.3f} > "
                              f"{old[domain]['accuracy']:.3f} + {g.min_new_gain}"))
        else:
            ok = new[domain]["accuracy"] >= old[domain]["accuracy"] - g.max_old_drop
            rules.append((ok, f"{domain} (old): {new[domain]['accuracy']:.3f} >= "
                              f"{old[domain]['accuracy']:.3f} - {g.max_old_drop}"))
    total = sum(r["n"] for r in new.values())
    error_rate = sum(r["errors"] for r in new.values()) / max(1, total)
    rules.append((error_rate <= g.max_error_rate,
                  f"error rate {error_rate:.4f} <= {g.max_error_rate}"))
    p95 = max(r["p95_ms"] for r in new.values())
    rules.append((p95 <= g.max_p95_ms, f"p95 {p95:.1f} ms <= {g.max_p95_ms} ms"))
    return all(ok for ok, _ in rules), [("PASS " if ok else "FAIL ") + text for ok, text in rules]


def prune(client: TorchServeClient, model: str, keep: int) -> list[str]:
    """Unregister the oldest non-default versions beyond `keep`."""
    registered, default = versions(client, model)
    removed = []
    for version in registered:
        if len(registered) - len(removed) <= keep:
            break
        if version != default:
            client.unregister(model, version)
            removed.append(version)
    return removed


def rollout(client: TorchServeClient, mar: Path, model: str, g: GateSettings,
            allow_weak: bool = False) -> dict[str, Any]:
    info = read_archive(mar)
    refuse_weak(info["report"], mar.name, allow_weak)
    model_store = mar.parent
    with rollout_lock(model_store, model) as state_file:
        registered, default = versions(client, model)  # also proves the server and key work
        version = info["version"]
        interrupted = _read_state(state_file)
        resuming = interrupted.get("version") == version and version in registered
        if version in registered and not resuming:
            raise RolloutError(f"{model} v{version} is already registered "
                               f"(versions: {', '.join(registered)}; default v{default})")
        if default is None:
            raise RolloutError(f"{model} is not registered; register a first version with "
                               "the management API (see README) before rolling out")
        held = holdouts(info["report"], g.holdout)
        _write_state(state_file, {"version": version, "step": "register"})
        if not resuming:
            print(f"registering {mar.name} as {model} v{version}", file=sys.stderr)
            client.register(mar.name, model, workers=g.workers)
        for ex in next(iter(held.values()))[:5]:  # warm the new workers
            client.predict(model, ex.text, version=version, evaluation=True)
        _write_state(state_file, {"version": version, "step": "gate"})
        old = {d: score(client, model, default, ex, g.concurrency) for d, ex in held.items()}
        new = {d: score(client, model, version, ex, g.concurrency) for d, ex in held.items()}
        new_domain = list(held)[-1]
        passed, rules = gate(old, new, new_domain, g)
        if passed:
            client.set_default(model, version)
            removed = prune(client, model, g.keep)
        else:
            client.unregister(model, version)
            removed = [version]
        state_file.unlink(missing_ok=True)
    table = "\n".join(f"{d:<8} default v{default} {old[d]['accuracy']:.3f}   "
                      f"new v{version} {new[d]['accuracy']:.3f}" for d in held)
    print(f"{table}\n" + "\n".join(rules) + "\n" +
          (f"promoted v{version} to default" if passed else
           f"rejected v{version}; v{default} stays default"), file=sys.stderr)
    return {"model": model, "version": version, "previous_default": default,
            "promoted": passed, "default": version if passed else default, "rules": rules,
            "old": old, "new": new, "new_domain": new_domain, "unregistered": removed,
            "gate": asdict(g), "resumed": resuming}


def rollback(client: TorchServeClient, model: str, to: str | None) -> dict[str, Any]:
    registered, default = versions(client, model)
    if default is None:
        raise RolloutError(f"{model} is not registered")
    older = [v for v in registered if _version_key(v) < _version_key(default)]
    target = to or (older[-1] if older else None)
    if target is None or target not in registered:
        raise RolloutError(f"no version to roll back to (registered: {', '.join(registered)}; "
                           f"default v{default})")
    client.set_default(model, target)
    print(f"{model}: default v{default} -> v{target}", file=sys.stderr)
    return {"model": model, "previous_default": default, "default": target}


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _client(args: argparse.Namespace) -> TorchServeClient:
    return TorchServeClient(args.inference_url, args.management_url, Path(args.key_file))


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name in TorchServe")
    p.add_argument("--inference-url", default="http://127.0.0.1:8080")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--key-file", default="key_file.json",
                   help="TorchServe's key_file.json (written in its working directory)")


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("rollout", help="register, gate on holdouts, switch the default; "
                                         "exit 0 promoted, 1 rejected, 2 error")
    _server_args(p)
    p.add_argument("--mar", required=True, help="NAME.vN.mar in the model store")
    p.add_argument("--model-store", default="model_store", help="default: model_store")
    p.add_argument("--allow-weak", action="store_true",
                   help="roll out an archive whose run was marked weak (no better than the "
                        "majority class)")
    config.add_arguments(p, GateSettings)

    def run(args: argparse.Namespace) -> tuple[dict, int]:
        mar = Path(args.model_store) / Path(args.mar).name
        result = rollout(_client(args), mar, args.model, config.from_args(GateSettings, args),
                         args.allow_weak)
        return result, EXIT_PROMOTED if result["promoted"] else EXIT_REJECTED

    p.set_defaults(func=run)

    r = verbs.add_parser("rollback", help="make the previous registered version the default")
    _server_args(r)
    r.add_argument("--to", help="version to make default (default: the one before it)")
    r.set_defaults(func=lambda args: (rollback(_client(args), args.model, args.to), 0))
