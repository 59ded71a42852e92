"""Which server a client verb talks to: the URL flags, else `serve start`'s record, else the
default ports; and the worker's own error line read back from the server's log."""

import argparse
import json
from pathlib import Path

from trainer.ops.client import TorchServeClient, add_server_arguments, server_from_args


def parse(*argv: str, inference: bool = True) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_server_arguments(p, inference=inference)
    return p.parse_args(list(argv))


def write_record(workdir: Path) -> dict:
    record = {"pid": 1, "inference_url": "http://127.0.0.1:9180",
              "management_url": "http://127.0.0.1:9181", "metrics_url": "http://127.0.0.1:9182",
              "key_file": str(workdir / "key_file.json"), "token_auth": True,
              "log": str(workdir / "torchserve.log"), "trusted_keys": "/keys/release.pub",
              "model_store": "/srv/model_store"}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "server.json").write_text(json.dumps(record))
    return record


def test_the_record_of_workdir_wins_over_the_default_ports(tmp_path):
    record = write_record(tmp_path / "ts")
    target = server_from_args(parse("--workdir", str(tmp_path / "ts")))
    assert (target.inference_url, target.management_url) == (record["inference_url"],
                                                             record["management_url"])
    assert target.key_file == Path(record["key_file"])
    assert target.trusted_keys == "/keys/release.pub"
    assert target.log == Path(record["log"]) and "server.json" in target.source
    assert target.model_store == Path("/srv/model_store")  # where sample finds the archive
    # A verb with no inference flag (drift) still finds the record's management address.
    drift = server_from_args(parse("--workdir", str(tmp_path / "ts"), inference=False))
    assert drift.management_url == record["management_url"]


def test_a_key_file_flag_overrides_the_records_key(tmp_path):
    write_record(tmp_path / "ts")
    target = server_from_args(parse("--workdir", str(tmp_path / "ts"),
                                    "--key-file", str(tmp_path / "mine.json")))
    assert target.key_file == tmp_path / "mine.json"


def test_url_flags_ignore_the_record(tmp_path):
    write_record(tmp_path / "ts")
    target = server_from_args(parse("--workdir", str(tmp_path / "ts"),
                                    "--management-url", "http://10.0.0.5:8081"))
    assert target.management_url == "http://10.0.0.5:8081"
    assert target.inference_url == "http://127.0.0.1:8080"
    assert target.key_file == Path("key_file.json") and target.trusted_keys == ""
    assert target.source == "the URL flags"


def test_without_a_record_the_default_ports_and_it_says_so(tmp_path):
    target = server_from_args(parse("--workdir", str(tmp_path / "nothing")))
    assert target.management_url == "http://127.0.0.1:8081"
    assert "no server.json" in target.source and str(tmp_path / "nothing") in target.source


def test_a_refused_registration_names_the_workers_error_line(tmp_path):
    """TorchServe 0.12's log of a worker whose handler raised in initialize()."""
    log = tmp_path / "torchserve.log"
    log.write_text("2026-12-05T10:00:00,000 [INFO ] old line MODEL_LOG - ValueError: earlier\n")
    client = TorchServeClient("http://127.0.0.1:1", "http://127.0.0.1:1", None, log=log)
    start = client._log_size()
    with open(log, "a") as f:
        f.write("2026-12-05T10:00:01,000 [INFO ] W-9000-bad_1.0-stdout MODEL_LOG - Traceback "
                "(most recent call last):\n"
                "2026-12-05T10:00:01,001 [INFO ] W-9000-bad_1.0-stdout MODEL_LOG - "
                "handlers.errors.SignatureError: unsigned archive (driftserve.signature.json "
                "missing)\n"
                "2026-12-05T10:00:01,002 [WARN ] W-9000-bad_1.0 Backend worker thread "
                "exception.\n")
    assert client._worker_error(start) == ("SignatureError: unsigned archive "
                                           "(driftserve.signature.json missing)")
    assert client._worker_error(log.stat().st_size) is None
