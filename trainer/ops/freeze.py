"""`trainer drift --freeze-reference`: a version's own served traffic becomes its drift reference
(handlers/frozen.py says why), kept in the model store beside the archive and published to the
version's statistics directory, where every worker adopts it."""

import zipfile
from pathlib import Path
from typing import Any

from handlers import frozen
from handlers.drift import DriftSettings, drift_test
from handlers.errors import HandlerError
from handlers.features import REFERENCE_FILE, Reference
from handlers.signing import load_private_key, trusted_keys_from_env
from handlers.stats import acknowledge, merge_windows
from trainer.common.errors import DataError, SettingsError


def archive_reference(mar: Path) -> Reference:
    """The drift reference packed in a version's .mar."""
    try:
        with zipfile.ZipFile(mar) as z:
            return Reference.from_bytes(z.read(REFERENCE_FILE))
    except FileNotFoundError:
        raise DataError(f"{mar}: no such archive in the model store (--model-store)") from None
    except KeyError:
        raise DataError(f"{mar}: the archive has no {REFERENCE_FILE} (monitor off)") from None
    except (zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{mar}: cannot read its {REFERENCE_FILE} ({e})") from e


def current_reference(stats_dir: Path, archived: Reference) -> tuple[Reference, str]:
    """What the workers compare with now: a frozen reference that passes its checks, else the
    archive's (a refused one is said, not used)."""
    try:
        found = frozen.load(stats_dir, trusted_keys_from_env())
    except HandlerError as e:
        raise DataError(f"{e}; delete it or freeze again") from e
    return (found[0], found[1]["file"]) if found else (archived, "the archive's reference")


def freeze_served(stats_dir: Path, archived: Reference, requests: int, confirmed: bool,
                  settings: DriftSettings, store_dir: Path, sign_key: Path | None, where: str
                  ) -> dict[str, Any]:
    """Check everything, then write the store's copy, then publish it to the workers."""
    if requests < frozen.MIN_REQUESTS:
        raise SettingsError(f"--requests {requests}: a frozen reference needs at least "
                            f"{frozen.MIN_REQUESTS} requests")
    private_key = load_private_key(sign_key) if sign_key else None  # a bad key fails first
    current, current_name = current_reference(stats_dir, archived)
    merged = merge_windows(stats_dir, requests)
    have = len(merged["classes"])
    if have < requests:
        raise DataError(f"{where}: {have} requests in its windows ({merged['workers']} "
                        f"worker(s)); --freeze-reference needs {requests}: serve more traffic, "
                        f"freeze fewer (--requests, at least {frozen.MIN_REQUESTS}), or archive "
                        "with a larger --window (requests each worker keeps)")
    if merged["names"] != current.names:
        raise DataError(f"{where}: window features {merged['names']} differ from the "
                        f"reference's {current.names}")
    window = {"classes": merged["classes"],
              "features": {n: merged["features"][:, i] for i, n in enumerate(merged["names"])}}
    check = drift_test(current.as_test_input(), window, settings.validate())
    if check["is_drift"] and not confirmed:
        raise DataError(f"{where}: {current_name} flags this traffic as drifted "
                        f"({check['rule']}); freeze it only if it is what this version should "
                        "serve: --confirm-in-domain")
    reference = frozen.freeze(archived, merged["features"], merged["classes"])
    manifest = frozen.write(store_dir, reference, merged["seen"], private_key)
    acknowledge(stats_dir)  # readers drop the rows compared with the old reference at once,
    frozen.publish(store_dir, stats_dir)  # and the workers restart with it
    return {"frozen_requests": requests, "store": str(store_dir), "stats_dir": str(stats_dir),
            "sha256": next(iter(manifest["files"].values())),
            "signed_by": manifest.get("key_id"), "flagged_by_current": check["is_drift"],
            "replaced": current_name}
