"""The folder of images added over the API or `lookalike catalog add`, kept consistent through crashes.

The order of a write is what makes a kill -9 at any point harmless:

1. the image goes to a temp file `.upload-<pid>-*` (fsynced) and is renamed to its final,
   content-unique name `<product id>-<sha256[:16]><ext>` (directory fsynced);
2. only then is the store row committed, so a served product's image is always on disk;
3. only after the commit is a replaced or deleted product's old image removed.

A crash leaves at most a temp file (1), an image no row points to (1-2), or an old image (3). At start-up
the server sweeps them: temp files of processes no longer alive always; unreferenced images only when it
holds the folder's lock alone (every serving or writing process holds it shared), so another live worker's
image, renamed but not yet committed, is never taken for a leftover.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lookalike.retrieval.stores import VectorStore

log = logging.getLogger("lookalike.uploads")
TEMP_PREFIX = ".upload-"
_DIGEST = re.compile(r"^(?P<id>.+)-[0-9a-f]{16}$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UploadDir:
    """An upload folder held with a shared lock for this object's lifetime (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(os.path.abspath(path))
        self.path.mkdir(parents=True, exist_ok=True)
        self._lockfd = os.open(self.path / ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        fcntl.flock(self._lockfd, fcntl.LOCK_SH)

    def close(self) -> None:
        os.close(self._lockfd)

    def final_path(self, product_id: str, data: bytes, ext: str) -> Path:
        return self.path / f"{product_id}-{hashlib.sha256(data).hexdigest()[:16]}{ext}"

    def place(self, data: bytes, final: Path) -> Path:
        """Write the image under its final name, durably, before any store commit refers to it."""
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path)
        return final

    @contextmanager
    def staged(self, final: Path, data: bytes, keep: str | None = None) -> Iterator[Path]:
        """Place the image at `final` for the block's store commit; if the block fails, remove it again
        unless it is `keep` (the image the current row already refers to)."""
        placed = self.place(data, final)
        try:
            yield placed
        except BaseException:
            if os.path.abspath(str(keep or "")) != str(placed):
                self.remove(placed)
            raise

    def owns(self, path: str | Path) -> bool:
        """Whether an image path lies in this folder (catalogue images elsewhere are never removed)."""
        return Path(os.path.abspath(str(path))).parent == self.path

    def remove(self, path: str | Path) -> None:
        if self.owns(path):
            Path(os.path.abspath(str(path))).unlink(missing_ok=True)

    @contextmanager
    def alone(self) -> Iterator[bool]:
        """Try to hold the folder's lock exclusively (no other server or CLI writer alive); True if held."""
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self._lockfd, fcntl.LOCK_SH)

    def sweep(self, store: VectorStore) -> dict[str, int]:
        """Remove what crashed writers left: dead processes' temp files, and images no product refers to."""
        temps = orphans = 0
        with self.alone() as alone:
            for f in self.path.glob(f"{TEMP_PREFIX}*"):
                pid = f.name[len(TEMP_PREFIX) :].split("-", 1)[0]
                if alone or not pid.isdigit() or not _alive(int(pid)):
                    f.unlink(missing_ok=True)
                    temps += 1
            if alone:
                images = [f for f in self.path.iterdir() if f.is_file() and not f.name.startswith(".")]
                owners = [(m.group("id") if (m := _DIGEST.match(f.stem)) else f.stem) for f in images]
                rows = store.get_many(owners) if images else []
                for f, row in zip(images, rows):
                    if row is None or os.path.abspath(str(row.metadata.get("image", ""))) != str(f):
                        f.unlink(missing_ok=True)
                        orphans += 1
        if temps or orphans:
            log.warning(
                "upload folder %s: removed %d temp file(s) and %d unreferenced image(s) left by an interrupted write",
                self.path,
                temps,
                orphans,
            )
        return {"temp_files": temps, "orphan_images": orphans, "swept_images": int(alone)}
