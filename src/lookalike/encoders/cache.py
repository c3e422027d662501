"""On-disk embedding cache keyed by content, so only changed images (or a changed model) are re-embedded.

Layout: `{root}/{namespace}-{encoder fingerprint}/shard-*.npz`, each shard holding `keys` and `vectors`,
and `{root}/file-keys.sqlite` (see `FileKeys`).
A key is the SHA-1 of the image bytes plus the crop box, or of the text: a changed file gets a new
key, a changed model or preprocessing a new directory. New vectors go to a new shard written to a
temporary name and renamed, so an interrupted run never leaves a half-written shard behind; the temp
file a killed writer left is removed by the next cache opened on its machine once its process is gone.

Reading and hashing 40k images costs more than everything else in a warm run, so `FileKeys`
remembers each file's content hash under its (path, size, mtime) — git's index does the same — and a
file whose stat is unchanged is not read again. A file modified within the last seconds is never
remembered (its mtime could still repeat), so the content hash stays the key that decides.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class EmbeddingCache:
    def __init__(self, root: Path, namespace: str, fingerprint: str, dim: int):
        self.dir = Path(root) / f"{namespace}-{fingerprint}"
        self.dim = dim
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        if self.dir.exists():
            self._sweep()
            for shard in sorted(self.dir.glob("shard-*.npz")):
                with np.load(shard) as z:
                    vectors = z["vectors"]
                    if vectors.shape[1] != dim:
                        continue
                    s = len(self._shards)
                    self._shards.append(vectors)
                    for row, key in enumerate(z["keys"].tolist()):
                        self._index[key] = (s, row)

    def _sweep(self) -> None:
        """Remove the temp shards of writers on this machine whose process has ended (killed mid-write): their
        names carry host and pid. Another machine's temps (a shared filesystem) are left to that machine."""
        host = socket.gethostname()
        for tmp in self.dir.glob(".shard-*.npz.tmp"):
            _, _, rest = tmp.name[: -len(".npz.tmp")].split("-", 2)  # ".shard", time, "host-pid"
            writer_host, _, pid = rest.rpartition("-")
            if writer_host == host and pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: list[str]) -> np.ndarray:
        out = np.empty((len(keys), self.dim), np.float32)
        for i, k in enumerate(keys):
            s, r = self._index[k]
            out[i] = self._shards[s][r]
        return out

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns()}-{socket.gethostname()}-{os.getpid()}"
        # The temp name does not match the shards' glob: a reader never opens a shard still being written
        # (another process's, or one a killed writer left behind half-written).
        tmp = self.dir / f".{name}.npz.tmp"
        vectors = np.ascontiguousarray(vectors, np.float32)
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys), vectors=vectors)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / f"{name}.npz")
        s = len(self._shards)
        self._shards.append(vectors)
        for row, key in enumerate(keys):
            self._index[key] = (s, row)


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def bytes_key(data: bytes, suffix: str = "") -> str:
    return hashlib.sha1(data).hexdigest() + suffix


class FileKeys:
    """(path, size, mtime_ns) → SHA-1 of the file's bytes, in one SQLite file beside the caches
    (safe for several processes sharing a cache)."""

    RACY_S = 2.0  # files younger than this may change again within the same mtime tick

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "file-keys.sqlite"
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha1 TEXT)"
            )
            self._known = {p: (size, mtime, sha) for p, size, mtime, sha in db.execute("SELECT * FROM files")}
        self._new: list[tuple[str, int, int, str]] = []

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        known = self._known.get(path)
        return known[2] if known is not None and known[:2] == (st.st_size, st.st_mtime_ns) else None

    def remember(self, path: str, st: os.stat_result, sha1: str) -> None:
        if time.time() - st.st_mtime > self.RACY_S:
            self._new.append((path, st.st_size, st.st_mtime_ns, sha1))

    def save(self) -> None:
        if self._new:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", self._new)
            self._new = []
