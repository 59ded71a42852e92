"""`trainer serve start|status|stop`: your own TorchServe with the shipped config, left running.

`start` launches TorchServe in its own session from a working directory (default .torchserve,
where it writes key_file.json), waits until it listens, optionally registers archives from the
model store, and records what it started in WORKDIR/server.json; `status` and `stop` read that.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from handlers.signing import TRUST_ENV, load_trusted_keys
from trainer.common.artifacts import atomic_write_json
from trainer.common.errors import ClientError, ServeError
from trainer.ops.client import SERVER_RECORD, TorchServeClient, read_server_record, target_of_record
from trainer.ops.rollout import read_archive, trust_arg
from trainer.ops.server import TorchServe, remove_scratch


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _client(state: dict[str, Any], workdir: Path) -> TorchServeClient:
    return target_of_record(state, workdir).client()


def shipped_config() -> Path:
    """./config.properties where there is one (a project's own), else the repository's, so that
    `serve start` works from any directory of a source checkout."""
    here = Path("config.properties")
    if here.is_file():
        return here
    shipped = Path(__file__).resolve().parents[2] / "config.properties"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError("no config.properties in this directory or beside the installed "
                            "trainer package; pass --config FILE (the repository's "
                            "config.properties holds the shipped security defaults)")


def start(workdir: Path, model_store: Path, config: Path | None, free_ports: bool,
          register: list[str], trusted_keys: str) -> dict[str, Any]:
    workdir = Path(workdir).resolve()
    old = read_server_record(workdir)
    if old and _alive(old["pid"]):
        raise ServeError(f"a TorchServe started from {workdir} is running (pid {old['pid']}); "
                         "`trainer serve stop` first")
    config = config or shipped_config()
    if not Path(config).is_file():
        raise FileNotFoundError(f"--config {config}: no such file")
    if not Path(model_store).is_dir():
        raise FileNotFoundError(f"--model-store {model_store}: no such directory")
    archives = [read_archive(Path(model_store) / Path(m).name) for m in register]
    if trusted_keys:
        load_trusted_keys(trusted_keys)  # fail here, not in every worker
        # Workers run from the server's working dir: hand them absolute paths.
        trusted_keys = ",".join(str(Path(p.strip()).resolve())
                                for p in trusted_keys.split(",") if p.strip())
    server = TorchServe(workdir, model_store, config, ports="free" if free_ports else None,
                        env={TRUST_ENV: trusted_keys} if trusted_keys else None)
    server.start()
    state = {"pid": server.proc.pid, "inference_url": server.inference_url,
             "management_url": server.management_url, "metrics_url": server.metrics_url,
             "key_file": str(server.key_file), "token_auth": server.token_auth,
             "log": str(server.log_path), "model_store": str(Path(model_store).resolve()),
             "trusted_keys": trusted_keys or None, "started_at": time.time()}
    client = _client(state, workdir)
    try:
        for info in archives:
            client.register(f"{info['name']}.v{info['version']}.mar", info["name"])
    except BaseException:  # a refused archive: no half-started server left behind
        server.stop()
        raise
    atomic_write_json(workdir / SERVER_RECORD, state)
    server.proc = None  # left running on purpose: `serve stop` ends it
    return {**state, "registered": [f"{a['name']} v{a['version']}" for a in archives]}


def status(workdir: Path) -> tuple[dict[str, Any], int]:
    workdir = Path(workdir).resolve()
    state = read_server_record(workdir)
    if state is None:
        return {"running": False, "workdir": str(workdir),
                "reason": f"no {SERVER_RECORD}: nothing started from here by `trainer serve start`"}, 1
    if not _alive(state["pid"]):
        return {**state, "running": False, "reason": f"pid {state['pid']} is gone"}, 1
    client = _client(state, workdir)
    try:
        health = client.ping()
        models = {}
        for m in client.models()["models"]:
            registered, default = client.versions(m["modelName"])
            models[m["modelName"]] = {"versions": registered, "default": default}
    except ClientError as e:
        return {**state, "running": False, "reason": str(e)}, 1
    for name, m in models.items():
        print(f"{name}: v{', v'.join(m['versions'])} registered; default v{m['default']}",
              file=sys.stderr)
    return {**state, "running": True, "health": health, "models": models}, 0


def stop(workdir: Path, timeout: float = 30.0) -> dict[str, Any]:
    workdir = Path(workdir).resolve()
    state = read_server_record(workdir)
    if state is None:
        raise ServeError(f"{workdir / SERVER_RECORD}: no server started from here")
    pid = state["pid"]
    stopped = _alive(pid)
    if stopped:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    remove_scratch(workdir)
    (workdir / SERVER_RECORD).unlink(missing_ok=True)
    return {"stopped": stopped, "pid": pid, "workdir": str(workdir)}


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("serve", help="start, check or stop your own TorchServe")
    actions = p.add_subparsers(dest="action", required=True)
    for name, text in (("start", "start TorchServe in the background"),
                       ("status", "is it up, where is its key file, what does it serve"),
                       ("stop", "stop the TorchServe started from --workdir")):
        a = actions.add_parser(name, help=text)
        a.add_argument("--workdir", type=Path, default=Path(".torchserve"),
                       help="its working dir: key_file.json, logs, server.json "
                            "(default: .torchserve)")
        if name == "start":
            a.add_argument("--model-store", type=Path, default=Path("model_store"))
            a.add_argument("--config", type=Path,
                           help="TorchServe config (default: ./config.properties, else the "
                                "shipped one beside this checkout's trainer/ package)")
            a.add_argument("--free-ports", action="store_true",
                           help="pick free loopback ports instead of the config's")
            a.add_argument("--register", action="append", default=[], metavar="NAME.vN.mar",
                           help="archive in the model store to register (repeatable)")
            trust_arg(a)

    def run(args: argparse.Namespace) -> tuple[dict, int]:
        if args.action == "start":
            out = start(args.workdir, args.model_store, args.config, args.free_ports,
                        args.register, args.trusted_keys)
            print(f"TorchServe is up (pid {out['pid']}) at {out['inference_url']}; "
                  f"keys in {out['key_file']} (send the inference key as "
                  f"'Authorization: Bearer KEY'); log: {out['log']}\n"
                  f"stop it with: driftserve serve stop --workdir {args.workdir}",
                  file=sys.stderr)
            return out, 0
        if args.action == "status":
            return status(args.workdir)
        return stop(args.workdir), 0

    p.set_defaults(func=run)
