"""Start and stop a real TorchServe: its own working dir, ports, TMPDIR and log; never left behind."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STARTED = "Model server started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def write_properties(path: Path, props: dict[str, str]) -> None:
    Path(path).write_text("".join(f"{k}={v}\n" for k, v in props.items()))


def remove_scratch(workdir: Path) -> None:
    """The stopped server's scratch: sockets, and the default stats directory with its windows
    and captured texts, which must not outlive the server (workers remove their own on SIGTERM;
    this also covers workers that had to be killed)."""
    shutil.rmtree(Path(workdir) / "tmp", ignore_errors=True)


class TorchServe:
    """A TorchServe process run with --foreground from `workdir` (where key_file.json lands).

    `ports=None` keeps the addresses of `config`; `ports="free"` picks free loopback ports, so
    tests and benchmarks never collide with a running server.
    """

    def __init__(self, workdir: Path, model_store: Path, config: Path,
                 ports: str | None = None, overrides: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.model_store = Path(model_store).resolve()
        self.props = read_properties(config)
        self.props["model_store"] = str(self.model_store)
        metrics_config = self.props.get("metrics_config")
        if metrics_config and not Path(metrics_config).is_absolute():
            self.props["metrics_config"] = str((Path(config).parent / metrics_config).resolve())
        if ports == "free":
            for key in ("inference_address", "management_address", "metrics_address"):
                self.props[key] = f"http://127.0.0.1:{free_port()}"
            # TorchServe also opens gRPC ports (7070/7071 by default) and exits when they
            # are taken, e.g. by another TorchServe on the machine.
            for key in ("grpc_inference_port", "grpc_management_port"):
                self.props[key] = str(free_port())
        self.props.update(overrides or {})
        self.env = dict(env or {})  # added to this process's environment (workers inherit it)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "torchserve.log"

    @property
    def inference_url(self) -> str:
        return self.props["inference_address"]

    @property
    def management_url(self) -> str:
        return self.props["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.props["metrics_address"]

    @property
    def token_auth(self) -> bool:
        """Off only where a config says so (the KServe export: KServe's wrapper sends no key)."""
        return self.props.get("disable_token_authorization", "false").lower() != "true"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def start(self, timeout: float = 120.0) -> "TorchServe":
        if shutil.which("java") is None:
            raise RuntimeError("TorchServe needs Java 17+: install openjdk-17-jre-headless")
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmpdir = self.workdir / "tmp"  # this server's scratch (pid file, stats windows)
        shutil.rmtree(tmpdir, ignore_errors=True)
        tmpdir.mkdir()
        # Worker sockets live in java.io.tmpdir (/tmp/.ts.sock.<port>, the same for every
        # server): give each server its own so that two servers never share a socket.
        self.props["vmargs"] = " ".join(
            a for a in self.props.get("vmargs", "").split()
            if not a.startswith("-Djava.io.tmpdir=")) + f" -Djava.io.tmpdir={tmpdir}"
        config = self.workdir / "config.properties"
        write_properties(config, self.props)
        self.key_file.unlink(missing_ok=True)
        env = {**os.environ, "TMPDIR": str(tmpdir), "LOG_LOCATION": str(self.workdir / "logs"),
               "METRICS_LOCATION": str(self.workdir / "logs"), "HF_HUB_OFFLINE": "1",
               "TS_DISABLE_SYSTEM_METRICS": "true", **self.env}
        bindir = Path(sys.executable).parent
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
        exe = shutil.which("torchserve", path=env["PATH"]) or "torchserve"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [exe, "--start", "--foreground", "--ncs", "--model-store", str(self.model_store),
             "--ts-config", str(config)],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"TorchServe exited with {self.proc.returncode}; "
                                       f"see {self.log_path}:\n{self.log_tail()}")
                if STARTED in self.log_path.read_text(errors="replace") and (
                        self.key_file.exists() or not self.token_auth):
                    return self
                time.sleep(0.25)
            raise TimeoutError(f"TorchServe did not start in {timeout}s; see {self.log_path}")
        except BaseException:  # and Ctrl-C or SIGTERM while starting: no server left behind
            self.stop()
            raise

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """PIDs of this server's Python workers (children of the Java frontend)."""
        if not self.proc:
            return []
        out = subprocess.run(["pgrep", "-s", str(self.proc.pid), "-f", "model_service_worker"],
                             capture_output=True, text=True).stdout
        return [int(p) for p in re.findall(r"\d+", out)]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is still there."""
        if not self.proc:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 10  # workers removing their windows on SIGTERM
        try:
            while time.monotonic() < deadline:
                os.killpg(self.proc.pid, 0)
                time.sleep(0.05)
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left in the group
        except ProcessLookupError:
            pass
        self.proc = None
        remove_scratch(self.workdir)

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
