"""Atomic writes: an artifact appears whole under its final name, or not at all.

Every file writer here builds on handlers.atomic.atomic_write_bytes (re-exported).
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from handlers.atomic import atomic_write_bytes, fsync_dir


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """`sort_keys=False` keeps the caller's order (tables whose rows are read in order)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    """A matplotlib figure rendered in memory, then written like every other report file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling directory to fill; on success it replaces `path` in one rename.

    An existing `path` is moved aside first and removed after the swap, so a reader sees the
    old directory, briefly nothing, or the new one -- never a half-written directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

