"""A small TorchServe client: bearer keys from key_file.json, inference and management calls,
and which server a verb talks to (the record `trainer serve start` wrote, or the flags)."""

import argparse
import json
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from trainer.common.errors import AuthorizationError, ClientError

SERVER_RECORD = "server.json"  # what `trainer serve start` launched, in its working dir
DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
# The last line of a worker's traceback, e.g. "MODEL_LOG - handlers.errors.SignatureError: ..."
_WORKER_ERROR = re.compile(r"MODEL_LOG - (?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def read_keys(key_file: Path) -> dict[str, str]:
    """TorchServe 0.12 writes {"management": {"key"}, "inference": {"key"}, "API": {"key"}}."""
    path = Path(key_file)
    try:
        raw = json.loads(path.read_text())
        return {kind: raw[kind]["key"] for kind in ("management", "inference", "API")}
    except FileNotFoundError as e:
        raise ClientError(f"{path}: key file not found; is TorchServe running from that "
                          "directory with token authorization on?") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ClientError(f"{path}: not a TorchServe key file ({e})") from e


class TorchServeClient:
    """Thread-safe: one requests.Session per thread, keys re-read when the server rejects one."""

    def __init__(self, inference_url: str, management_url: str, key_file: Path | None,
                 timeout: float = 60.0, log: Path | None = None) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self.log = Path(log) if log else None  # the server's log, where workers' errors land
        self._keys = read_keys(self.key_file) if self.key_file else {}
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _headers(self, kind: str) -> dict[str, str]:
        key = self._keys.get(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, kind: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Raw call; `kind` is "inference" or "management" (which key and which address)."""
        base = self.inference_url if kind == "inference" else self.management_url
        headers = {**self._headers(kind), **kwargs.pop("headers", {})}
        try:
            return self.session.request(method, base + path, headers=headers,
                                        timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except requests.ConnectionError as e:
            raise ClientError(f"TorchServe is not reachable at {base}: {e}") from e

    def _call(self, kind: str, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(kind, method, path, **kwargs)
        if resp.status_code == 400 and "InvalidKeyException" in resp.text and self.key_file:
            self._keys = read_keys(self.key_file)  # keys change when TorchServe restarts
            resp = self.request(kind, method, path, **kwargs)
        if resp.status_code in (400, 401) and "InvalidKeyException" in resp.text:
            base = self.inference_url if kind == "inference" else self.management_url
            raise AuthorizationError(
                f"authorization failed: TorchServe at {base} refused the {kind} key"
                f"{f' from {self.key_file}' if self.key_file else ' (none sent)'}; is that "
                f"file the key file of this server? ({_message(resp)})", resp.status_code)
        if resp.status_code >= 400:
            raise ClientError(f"{method} {path} -> {resp.status_code}: {_message(resp)}",
                              resp.status_code)
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def predict(self, model: str, text: str, version: str | None = None,
                evaluation: bool = False) -> dict[str, Any]:
        """`evaluation=True` marks holdout traffic, which the handler keeps out of its drift
        statistics."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        headers = {"X-Driftserve-Evaluation": "true"} if evaluation else {}
        return self._call("inference", "POST", path, json={"text": text}, headers=headers)

    def ping(self) -> Any:
        return self._call("inference", "GET", "/ping")

    def register(self, mar: str, name: str, workers: int = 1) -> Any:
        """A worker that refuses the archive (bad signature, manifest) makes TorchServe answer
        only "Failed to start workers"; the worker's own error line is in the server's log."""
        params = {"url": mar, "model_name": name, "initial_workers": workers,
                  "synchronous": "true"}
        start = self._log_size()
        try:
            return self._call("management", "POST", "/models", params=params, timeout=600)
        except AuthorizationError:
            raise
        except ClientError as e:
            reason = self._worker_error(start)
            if reason is None:
                raise
            raise ClientError(f"{mar}: the worker refused it: {reason} ({e})", e.status) from e

    def _log_size(self) -> int:
        try:
            return self.log.stat().st_size if self.log else 0
        except OSError:
            return 0

    def _worker_error(self, start: int) -> str | None:
        """The last worker error line written to the log since byte `start`."""
        if self.log is None:
            return None
        try:
            with open(self.log, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        found = [m.group(1) + ": " + m.group(2).strip()
                 for m in map(_WORKER_ERROR.search, text.splitlines()) if m]
        return found[-1] if found else None

    def unregister(self, name: str, version: str | None = None) -> Any:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        return self._call("management", "DELETE", path)

    def scale(self, name: str, workers: int) -> Any:
        """Exactly `workers` workers, waiting until TorchServe has started or stopped them."""
        params = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
        return self._call("management", "PUT", f"/models/{name}", params=params, timeout=600)

    def set_default(self, name: str, version: str) -> Any:
        return self._call("management", "PUT", f"/models/{name}/{version}/set-default")

    def describe(self, name: str, version: str | None = None,
                 customized: bool = False) -> Any:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        return self._call("management", "GET", path,
                          params={"customized": "true"} if customized else None)

    def models(self) -> Any:
        return self._call("management", "GET", "/models")

    def versions(self, name: str) -> tuple[list[str], str | None]:
        """Registered versions (ascending) and the default one; none for an unknown model."""
        try:
            listed = self._call("management", "GET", f"/models/{name}/all")
        except ClientError as e:
            if e.status == 404:
                return [], None
            raise
        default = self.describe(name)[0]["modelVersion"]
        found = sorted({str(m["modelVersion"]) for m in listed}, key=version_key)
        return found, str(default)


def version_key(version: str) -> tuple[int, ...]:
    """Order versions as numbers: 10 after 9, 1.10 after 1.9."""
    return tuple(int(x) for x in version.split("."))


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return body.get("message") or body.get("error") or resp.text
    except ValueError:
        return resp.text.strip()[:500]


def read_server_record(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(workdir) / SERVER_RECORD).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ServerTarget:
    """Which TorchServe a verb talks to, and how it found out (printed before the first call)."""

    inference_url: str
    management_url: str
    key_file: Path | None
    source: str
    trusted_keys: str = ""  # what the server's workers were started trusting (its record)
    log: Path | None = None
    model_store: Path | None = None  # the store it was started with (its record)

    def client(self) -> TorchServeClient:
        return TorchServeClient(self.inference_url, self.management_url, self.key_file,
                                log=self.log)


def target_of_record(record: dict[str, Any], workdir: Path,
                     key_file: Path | None = None) -> ServerTarget:
    """The server `serve start` recorded in `workdir`; `key_file` overrides its key file."""
    key = key_file or (Path(record["key_file"]) if record["token_auth"] else None)
    return ServerTarget(record["inference_url"], record["management_url"], key,
                        f"the server record {Path(workdir) / SERVER_RECORD}",
                        record.get("trusted_keys") or "", Path(record["log"]),
                        Path(record["model_store"]) if record.get("model_store") else None)


def add_server_arguments(p: argparse.ArgumentParser, inference: bool = True) -> None:
    """Where a running TorchServe answers, as every verb that calls one takes it."""
    if inference:
        p.add_argument("--inference-url", help="default: from the server record, else "
                                               f"{DEFAULT_INFERENCE_URL}")
    p.add_argument("--management-url", help="default: from the server record, else "
                                            f"{DEFAULT_MANAGEMENT_URL}")
    p.add_argument("--key-file", type=Path,
                   help="TorchServe's key_file.json (default: the server record's, else "
                        "key_file.json here)")
    p.add_argument("--workdir", type=Path, default=Path(".torchserve"),
                   help="where `trainer serve start` recorded the server it started; used when "
                        "no URL is given (default: .torchserve)")


def server_from_args(args: argparse.Namespace) -> ServerTarget:
    """The flags' server when a URL is given, else the one `serve start` recorded in --workdir,
    else TorchServe's default ports. Never a guess between them: the record wins over the
    defaults, so a key is not sent to some other server on the default ports."""
    urls = [getattr(args, "inference_url", None), args.management_url]
    if not any(urls):
        record = read_server_record(args.workdir)
        if record is not None:
            return target_of_record(record, args.workdir, args.key_file)
    management = args.management_url or DEFAULT_MANAGEMENT_URL
    inference = (getattr(args, "inference_url", None) or
                 (DEFAULT_INFERENCE_URL if hasattr(args, "inference_url") else management))
    source = ("the URL flags" if any(urls) else
              f"the default ports (no {SERVER_RECORD} in {args.workdir})")
    return ServerTarget(inference, management, args.key_file or Path("key_file.json"), source)


def target_from_args(args: argparse.Namespace) -> ServerTarget:
    """server_from_args, said on stderr before the first call."""
    target = server_from_args(args)
    print(f"TorchServe: management {target.management_url} (from {target.source})",
          file=sys.stderr)
    return target


def client_from_args(args: argparse.Namespace) -> TorchServeClient:
    """The client for add_server_arguments' flags; says on stderr which server it is."""
    return target_from_args(args).client()
