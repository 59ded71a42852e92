"""Atomic file writes (write beside, fsync, rename), shared by the handlers and the trainer."""

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """`data` appears whole under `path`, or `path` keeps what it held: a process killed mid-write
    leaves at most a hidden temporary file. The file is created mode 0600 (mkstemp).
    `durable=False` skips both fsyncs (of the file, and of the directory after the rename): the
    write stays atomic for readers and killed writers, only a power loss may lose it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
