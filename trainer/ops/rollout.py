"""`trainer rollout` / `trainer rollback`: register a new version next to the default, gate it on
labelled holdouts through its versioned URL, switch the default only when the gate passes."""

import argparse
import fcntl
import json
import os
import re
import signal
import sys
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from handlers.manifest import sha256_file
from handlers.signing import TRUST_ENV, load_trusted_keys, verify_mar
from trainer.common import config
from trainer.common.artifacts import atomic_write_bytes
from trainer.common.config import check, setting
from trainer.common.errors import RolloutError
from trainer.model.quality import refuse_weak
from trainer.ops.client import (
    TorchServeClient,
    add_server_arguments,
    client_from_args,
    server_from_args,
    version_key,
)
from trainer.ops.gate import FAIL, INCONCLUSIVE, PASS
from trainer.ops.gate_evidence import (
    Labeller,
    answer_all,
    file_labeller,
    gate_holdouts,
    judge,
    read_traffic,
)
from trainer.ops.serving_record import read_record, restore, write_record

EXIT_PROMOTED, EXIT_REJECTED, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
MAR_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_-]*)\.v(?P<version>[0-9]+(\.[0-9]+)*)\.mar$")


@dataclass
class GateSettings:
    max_old_drop: float = setting(0.02, "accuracy the new version may lose on any old domain")
    min_new_gain: float = setting(0.0, "the new version must beat the default on the new domain "
                                       "by more than this")
    confidence: float = setting(0.95, "one-sided confidence each accuracy rule is decided at "
                                      "(paired interval over the same holdout sentences)")
    max_error_rate: float = setting(0.0, "share of holdout requests allowed to fail")
    p95_ratio: float = setting(1.5, "the new version's p95 latency may be this many times the "
                                    "default's, measured in the same gate ...")
    p95_slack_ms: float = setting(20.0, "... plus this many milliseconds")
    holdout: int = setting(1000, "labelled test sentences per domain sent to each version (the "
                                 "test split caps it); a 2-point margin needs about 1,000 where "
                                 "no held-out texts allow the disagreement evidence")
    max_labels: int = setting(300, "labels asked per old domain, on held-out texts where the "
                                   "versions disagree, when the share alone cannot decide "
                                   "(the loop's labeller, or --labels FILE)")
    concurrency: int = setting(4, "client threads for the holdout requests")
    keep: int = setting(3, "versions kept registered for rollback (default included)")
    workers: int = setting(1, "workers started for the new version")

    def validate(self) -> None:
        problems = []
        if not 0 <= self.max_old_drop <= 1:
            problems.append(f"max_old_drop must be in [0, 1], got {self.max_old_drop}")
        if not 0 <= self.max_error_rate <= 1:
            problems.append(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.max_labels < 0:
            problems.append(f"max_labels must be >= 0, got {self.max_labels}")
        for name in ("holdout", "concurrency", "keep", "workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.p95_ratio < 1 or self.p95_slack_ms < 0:
            problems.append(f"p95_ratio must be >= 1 and p95_slack_ms >= 0, got "
                            f"{self.p95_ratio} and {self.p95_slack_ms}")
        if not 0.5 < self.confidence < 1:
            problems.append(f"confidence must be in (0.5, 1), got {self.confidence}")
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
    name = str(manifest["model"].get("modelName", match["name"]))
    if version != match["version"] or name != match["name"]:
        raise RolloutError(f"{mar.name}: file name says {match['name']} v{match['version']} but "
                           f"the archive is {name} v{version}")
    return {"name": name, "version": version, "report": report, "config": model_config}


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


def prune(client: TorchServeClient, model: str, keep: int) -> list[str]:
    """Unregister the oldest non-default versions beyond `keep`."""
    registered, default = client.versions(model)
    removed = []
    for version in registered:
        if len(registered) - len(removed) <= keep:
            break
        if version != default:
            client.unregister(model, version)
            removed.append(version)
    return removed


# Kill tests: DRIFTSERVE_ROLLOUT_KILL=after:STEP makes the rollout SIGKILL itself right after that
# step's action, before its state file records it, so the rerun must redo it without harm.
KILL_ENV = "DRIFTSERVE_ROLLOUT_KILL"
WARM_REQUESTS = 20
STEPS = ("register", "warm", "gate", "set-default", "prune", "unregister")


def _after(step: str) -> None:
    if os.environ.get(KILL_ENV) == f"after:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def rollout(client: TorchServeClient, mar: Path, model: str, g: GateSettings,
            allow_weak: bool = False, trusted: dict[str, Any] | None = None,
            labeller: Labeller | None = None, to_label: Path | None = None,
            traffic: Sequence[str] = ()) -> dict[str, Any]:
    """register -> warm -> gate -> set-default -> prune (or -> unregister). The state file names
    the next step (and, after the gate, its decision) before it runs, and every step is safe to
    repeat, so a rerun after a kill at any point finishes the same rollout. `labeller` answers
    the gate's label requests on disagreements; those it leaves open go to `to_label` when the
    gate cannot decide without them. `traffic`: texts the default served before the drift, more
    evidence on what already worked (trainer.ops.gate_evidence.add_traffic)."""
    info = read_archive(mar)
    if info["name"] != model:
        raise RolloutError(f"{mar.name} is an archive of model {info['name']!r}, not of --model "
                           f"{model!r}")
    refuse_weak(info["report"], mar.name, allow_weak)
    signer = verify_mar(mar, trusted)["key_id"] if trusted else None
    version = info["version"]
    with rollout_lock(mar.parent, model) as state_file:
        registered, default = client.versions(model)  # also proves the server and key work
        state = _read_state(state_file)
        archive = sha256_file(mar)
        resumed = (state.get("version") == version and state.get("step") in STEPS
                   and state.get("mar_sha256", archive) == archive)  # not another v{version}
        if resumed and state["step"] in ("warm", "gate", "set-default") \
                and version not in registered:  # the server restarted since: register again
            if state.get("previous_default") not in registered:
                raise RolloutError(f"{model} v{version} and v{state.get('previous_default')} "
                                   "are no longer registered (TorchServe restarted?): run "
                                   "`trainer restore`, then this rollout again")
            print(f"resuming the rollout of {mar.name}: {model} v{version} is no longer "
                  "registered; registering it again", file=sys.stderr)
            state["step"] = "register"
        if not resumed:
            if version in registered:
                raise RolloutError(f"{model} v{version} is already registered "
                                   f"(versions: {', '.join(registered)}; default v{default})")
            if default is None:
                raise RolloutError(f"{model} is not registered; register a first version with "
                                   "the management API (see README) before rolling out")
            state = {"version": version, "previous_default": default, "step": "register",
                     "mar_sha256": archive}
        state.setdefault("previous_default", default)  # a state file from before this format

        def advance(step: str, **extra: Any) -> None:
            state.update(step=step, **extra)
            _write_state(state_file, state)

        advance(state["step"])  # recorded before the step runs

        default_mar = mar.parent / f"{model}.v{state['previous_default']}.mar"
        if not default_mar.is_file():
            raise RolloutError(f"the default v{state['previous_default']}'s archive "
                               f"{default_mar.name} is not in {mar.parent}: the gate cannot tell "
                               "which domains it serves")
        new_domain, held, notes = gate_holdouts(mar, default_mar, g.holdout, traffic)
        for note in notes:
            print(f"gate: {note}", file=sys.stderr)
        if state["step"] == "register":
            if version not in client.versions(model)[0]:
                print(f"registering {mar.name} as {model} v{version}", file=sys.stderr)
                client.register(mar.name, model, workers=g.workers)
            _after("register")
            advance("warm")
        if state["step"] == "warm":  # a fresh worker's first requests are slow
            for ex in held[new_domain].labelled[:WARM_REQUESTS]:
                client.predict(model, ex.text, version=version, evaluation=True)
            _after("warm")
            advance("gate")
        if state["step"] == "gate":
            answers = answer_all(client, model, (state["previous_default"], version), held,
                                 g.concurrency)
            judged = judge(answers, new_domain, g, labeller)
            outcome = judged["outcome"]
            if outcome == INCONCLUSIVE and judged["to_label"] and to_label is not None:
                atomic_write_bytes(to_label, "".join(
                    json.dumps({"text": t, "label": "", "domain": d}, ensure_ascii=False) + "\n"
                    for d, texts in judged["to_label"].items() for t in texts).encode())
                judged["to_label_file"] = str(to_label)
            _after("gate")
            advance("set-default" if outcome == PASS else "unregister", outcome=outcome,
                    rules=judged["rules"], old=_summary(judged["old"]),
                    new=_summary(judged["new"]),
                    evidence={k: judged.get(k) for k in (
                        "churn", "labels_asked", "labels_answered", "to_label_file")})
        removed: list[str] = []
        if state["step"] == "set-default":
            client.set_default(model, version)
            _after("set-default")
            advance("prune")
        if state["step"] == "prune":
            removed = prune(client, model, g.keep)
            write_record(mar.parent, model, *client.versions(model))
            _after("prune")
        if state["step"] == "unregister":
            if version in client.versions(model)[0]:
                client.unregister(model, version)
            write_record(mar.parent, model, *client.versions(model))
            removed = [version]
            _after("unregister")
        state_file.unlink(missing_ok=True)
    outcome, before = state["outcome"], state["previous_default"]
    promoted = outcome == PASS
    table = "\n".join(f"{d:<8} default v{before} {_acc(state['old'][d])}   "
                      f"new v{version} {_acc(state['new'][d])}" for d in state["new"])
    ending = {PASS: f"promoted v{version} to default",
              FAIL: f"rejected v{version}; v{before} stays default",
              INCONCLUSIVE: f"inconclusive: the holdout cannot decide; v{before} stays default "
                            f"and v{version} is unregistered"}[outcome]
    evidence = state.get("evidence") or {}
    if evidence.get("to_label_file"):
        ending += (f"; label the texts in {evidence['to_label_file']} and run the rollout again "
                   "with --labels FILE")
    print(f"{table}\n" + "\n".join(state["rules"]) + "\n" + ending, file=sys.stderr)
    return {"model": model, "version": version, "previous_default": before,
            "promoted": promoted, "outcome": OUTCOMES[outcome],
            "default": version if promoted else before, "rules": state["rules"],
            "old": state["old"], "new": state["new"], "new_domain": new_domain,
            **{k: evidence.get(k) for k in ("churn", "labels_asked", "labels_answered",
                                            "to_label_file")},
            "unregistered": removed, "gate": asdict(g), "resumed": resumed,
            "signed_by": signer}


OUTCOMES = {PASS: "promoted", FAIL: "rejected", INCONCLUSIVE: "inconclusive"}


def _acc(scores: dict[str, Any]) -> str:
    return f"{scores['accuracy']:.3f} on {scores['n']} labelled" if scores["n"] else "no labels"


def _summary(scores: dict[str, dict]) -> dict[str, dict]:
    """Scores without the per-sentence answers (the state file and result stay small)."""
    return {d: {k: v for k, v in r.items() if k != "correct"} for d, r in scores.items()}


def rollback(client: TorchServeClient, model: str, to: str | None,
             model_store: Path | None = None) -> dict[str, Any]:
    registered, default = client.versions(model)
    if default is None:
        raise RolloutError(f"{model} is not registered")
    older = [v for v in registered if version_key(v) < version_key(default)]
    target = to or (older[-1] if older else None)
    if target is None or target not in registered:
        raise RolloutError(f"no version to roll back to (registered: {', '.join(registered)}; "
                           f"default v{default})")
    client.set_default(model, target)
    if model_store is not None:
        write_record(model_store, model, registered, target)
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


def _run_restore(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    record = read_record(Path(args.model_store), args.model)  # checked before any server call
    trusted = _trusted(args)
    for name in record["versions"].values() if trusted else ():
        verify_mar(Path(args.model_store) / name, trusted)
    return restore(client_from_args(args), record, args.workers), 0


def _trusted(args: argparse.Namespace) -> dict[str, Any] | None:
    """--trusted-keys, else the keys the recorded server's workers trust: checking here first
    names a bad signature before TorchServe's bare "Failed to start workers"."""
    paths = args.trusted_keys or server_from_args(args).trusted_keys
    return load_trusted_keys(paths) if paths else None


def trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trusted-keys", default=os.environ.get(TRUST_ENV, ""),
                   help="public keys (.pub files or directories, comma-separated) whose "
                        "signature an archive must carry (default: "
                        f"${TRUST_ENV}; empty: not checked)")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name in TorchServe")
    add_server_arguments(p)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("rollout", help="register, gate on holdouts, switch the default; "
                                         "exit 0 promoted, 1 rejected, 2 error, 3 inconclusive")
    _server_args(p)
    p.add_argument("--mar", required=True, help="NAME.vN.mar in the model store")
    p.add_argument("--model-store", default="model_store", help="default: model_store")
    p.add_argument("--allow-weak", action="store_true",
                   help="roll out an archive whose run was marked weak (no better than the "
                        "majority class)")
    p.add_argument("--labels", type=Path,
                   help="labelled texts (JSONL/CSV: text, label) the gate may use where the "
                        "versions disagree on held-out texts (e.g. a labelled --to-label file)")
    p.add_argument("--traffic", type=Path,
                   help="JSONL of texts the default served before the drift (e.g. `driftserve "
                        "sample --select before-drift`): more unlabelled evidence on the old "
                        "domain(s); only a \"text\" field is read")
    p.add_argument("--to-label", type=Path, default=Path("gate_to_label.jsonl"),
                   help="where the texts the gate wants labelled go when it cannot decide "
                        "without them (default: gate_to_label.jsonl)")
    trust_arg(p)
    config.add_arguments(p, GateSettings)

    def run(args: argparse.Namespace) -> tuple[dict, int]:
        mar = Path(args.model_store) / Path(args.mar).name
        labeller = None
        if args.labels:
            labeller = file_labeller(args.labels, read_archive(mar)["report"]["labels"])
        traffic = read_traffic(args.traffic) if args.traffic else ()
        result = rollout(client_from_args(args), mar, args.model, config.from_args(GateSettings, args),
                         args.allow_weak, _trusted(args), labeller, args.to_label, traffic)
        return result, {"promoted": EXIT_PROMOTED, "rejected": EXIT_REJECTED,
                        "inconclusive": EXIT_INCONCLUSIVE}[result["outcome"]]

    p.set_defaults(func=run)

    r = verbs.add_parser("rollback", help="make the previous registered version the default")
    _server_args(r)
    r.add_argument("--to", help="version to make default (default: the one before it)")
    r.add_argument("--model-store", default="model_store",
                   help="where the serving record is kept (default: model_store)")
    r.set_defaults(func=lambda args: (rollback(client_from_args(args), args.model, args.to,
                                               Path(args.model_store)), 0))

    s = verbs.add_parser("restore", help="after a TorchServe restart: register the versions "
                                         "the last rollout or rollback left and set its default")
    _server_args(s)
    s.add_argument("--model-store", default="model_store", help="(default: model_store)")
    s.add_argument("--workers", type=int, default=1, help="workers per restored version")
    trust_arg(s)
    s.set_defaults(func=_run_restore)
