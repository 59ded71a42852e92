"""`trainer keygen`: an Ed25519 key pair for signing archives (`trainer archive --sign-key`)."""

import argparse
import os
from pathlib import Path

from handlers.signing import TRUST_ENV, generate_keypair
from trainer.common.artifacts import atomic_write_bytes
from trainer.common.errors import SettingsError


def keygen(out: Path) -> dict[str, str]:
    """OUT.key (private, mode 0600) and OUT.pub; never overwrites a key."""
    out = Path(out)
    private, public = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise SettingsError(f"{path} exists; refusing to overwrite a key (choose another "
                                "--out or remove it)")
    key, pub, kid = generate_keypair()
    atomic_write_bytes(public, pub)
    atomic_write_bytes(private, key)  # atomic_write_bytes creates files 0600
    os.chmod(public, 0o644)
    return {"private_key": str(private), "public_key": str(public),
            "key_id": kid}


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("keygen", help="make an Ed25519 key pair for signing archives")
    p.add_argument("--out", required=True,
                   help="path prefix: writes OUT.key (keep it secret) and OUT.pub (give it to "
                        f"the server through {TRUST_ENV})")
    p.set_defaults(func=lambda args: (keygen(Path(args.out)), 0))
