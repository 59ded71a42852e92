"""A small TorchServe client: bearer keys from key_file.json, inference and management calls."""

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import requests

from trainer.errors import ClientError


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
                 timeout: float = 60.0) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
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
        params = {"url": mar, "model_name": name, "initial_workers": workers,
                  "synchronous": "true"}
        return self._call("management", "POST", "/models", params=params, timeout=600)

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


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return body.get("message") or body.get("error") or resp.text
    except ValueError:
        return resp.text.strip()[:500]


def add_server_arguments(p: argparse.ArgumentParser, inference: bool = True) -> None:
    """Where a running TorchServe answers, as every verb that calls one takes it."""
    if inference:
        p.add_argument("--inference-url", default="http://127.0.0.1:8080")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--key-file", default="key_file.json",
                   help="TorchServe's key_file.json (written in its working directory)")


def client_from_args(args: argparse.Namespace) -> TorchServeClient:
    """The client for add_server_arguments' flags (management only when inference is absent)."""
    inference = getattr(args, "inference_url", None) or args.management_url
    return TorchServeClient(inference, args.management_url, Path(args.key_file))
