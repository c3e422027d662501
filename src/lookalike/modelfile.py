"""Model files (checkpoints, rerankers, adapters, taggers): written whole or not at all, and read back with a
one-line error naming the file when it is missing, unreadable or of another kind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from lookalike.errors import LookalikeError


def save_atomic(payload: dict, path: Path) -> None:
    """`torch.save` to a temp file beside `path`, fsynced, then renamed over it: a crash or a kill at any
    moment leaves the previous file or the new one, never half of one (what `--resume` and serving read)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)


def read_model_file(path: str | Path, fmt: str, what: str, a_what: str) -> dict:
    """The payload of a model file whose `format` is `fmt` (weights only: never code from a file); `what` names
    the kind in the errors ("adapter file"), `a_what` with its article ("an adapter file")."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LookalikeError(f"{what} not found: {path}") from None
    except Exception as e:  # torch raises several kinds for a truncated or foreign file
        raise LookalikeError(f"cannot read {what} {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise LookalikeError(f"{path} is not {a_what} (format {fmt!r})")
    return payload
