"""Signed archives on the real TorchServe: a server started with trusted keys serves a signed
MiniLM archive and refuses an unsigned one, one signed by another key, one whose model-config.yaml
changed and one carrying a file the signature does not list -- each naming what is wrong.
(A changed handler *module* runs before any check inside the worker can: rollout's verify_mar
refuses those before the server sees them, tests/unit/handlers/test_signing.py.)"""

from pathlib import Path

import pytest

from handlers.signing import TRUST_ENV, load_private_key, sign_mar
from tests.mars import copy_mar
from trainer.ops.client import ClientError, TorchServeClient
from trainer.ops.server import TorchServe
from trainer.packaging.archive import ArchiveSettings, build_archive
from trainer.packaging.keys import keygen

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trusted_server(tmp_path_factory, minilm_run):
    keys = tmp_path_factory.mktemp("keys")
    release, other = keygen(keys / "release"), keygen(keys / "other")
    store = tmp_path_factory.mktemp("signed-store")

    signed = build_archive(minilm_run, "signed", "1", store, ArchiveSettings(), allow_weak=True,
                           sign_key=Path(release["private_key"]))
    unsigned = build_archive(minilm_run, "unsigned", "1", store, ArchiveSettings(),
                             allow_weak=True)

    def signed_copy(name: str, key: dict) -> Path:
        mar = copy_mar(unsigned, name)
        sign_mar(mar, load_private_key(Path(key["private_key"])))
        return mar

    signed_copy("otherkey", other)
    copy_mar(signed_copy("changedcfg", release),
             replace={"model-config.yaml": b"handler:\n  max_chars: 100000\n"})
    copy_mar(signed_copy("extrafile", release), replace={"handlers/sitecustomize.py": b"import os\n"})
    assert signed.exists()
    ts = TorchServe(tmp_path_factory.mktemp("ts-signed"), store, ROOT / "config.properties",
                    ports="free", env={TRUST_ENV: release["public_key"]})
    ts.start()
    try:
        client = TorchServeClient(ts.inference_url, ts.management_url, ts.key_file)
        client.register("signed.v1.mar", "signed")
        yield ts, client, release
    finally:
        ts.stop()


def test_a_signed_archive_is_served(trusted_server):
    ts, client, release = trusted_server
    assert client.predict("signed", "the service was fine")["label"]
    assert f"archive signature verified (key {release['key_id']})" in \
        ts.log_path.read_text(errors="replace")


@pytest.mark.parametrize("name, message", [
    ("unsigned", "unsigned archive (driftserve.signature.json missing)"),
    ("otherkey", "which is not trusted"),
    ("changedcfg", "model-config.yaml: sha256"),
    ("extrafile", "handlers/sitecustomize.py: in "),
])
def test_a_bad_archive_is_refused_naming_the_problem(trusted_server, name, message):
    ts, client, _ = trusted_server
    try:
        with pytest.raises(ClientError):
            client.register(f"{name}.v1.mar", name)
        assert message in ts.log_path.read_text(errors="replace")
    finally:
        try:
            client.unregister(name)
        except ClientError:
            pass
    assert client.predict("signed", "the signed model still serves")["label"]
