"""Copies of a real archive for tests that need many of one model: a torch-model-archiver build
re-labelled with another name or version, or with entries replaced. Re-deflating 90 MB of MiniLM
weights per archive was most of those fixtures' time; the copies store entries uncompressed,
which TorchServe and the handler read the same way."""

import json
import zipfile
from pathlib import Path

MANIFEST = "MAR-INF/MANIFEST.json"


def copy_mar(mar: Path, name: str | None = None, version: str | None = None,
             replace: dict[str, bytes] | None = None) -> Path:
    """`mar` as `<store>/<name>.v<version>.mar` (its manifest says so too), with `replace`'s
    entries replaced or added. Same name and version: rewritten in place."""
    with zipfile.ZipFile(mar) as z:
        manifest = json.loads(z.read(MANIFEST))
    model, changes = manifest["model"], dict(replace or {})
    if name or version:  # else the manifest stays byte for byte (signatures cover it)
        model["modelName"] = name or model["modelName"]
        model["modelVersion"] = version or model["modelVersion"]
        changes[MANIFEST] = json.dumps(manifest, indent=2).encode()
    out = mar.parent / f"{model['modelName']}.v{model['modelVersion']}.mar"
    tmp = out.with_suffix(".copying")
    with zipfile.ZipFile(mar) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, changes.pop(item.filename, None) or zin.read(item))
        for entry, data in changes.items():
            zout.writestr(entry, data)
    tmp.replace(out)
    return out
