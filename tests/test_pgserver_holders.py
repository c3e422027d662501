"""An in-process PostgreSQL (pgserver://) stops when the last process using it exits, even after another
of its users was killed by SIGKILL (which leaves its pid among pgserver's holders)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

HOLD = """
import sys
from pathlib import Path
from lookalike.retrieval.stores import start_pgserver
start_pgserver(Path(sys.argv[1]))
print("up", flush=True)
sys.stdin.read()  # hold the server until stdin closes, then exit normally (exit handlers run)
"""


pytestmark = pytest.mark.slow  # starts PostgreSQL


def _holder(pgdata: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(pgdata)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "up"
    return p


def _postmaster(pgdata: Path) -> psutil.Process | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    return psutil.Process(pid) if psutil.pid_exists(pid) else None


def test_postgres_stops_with_its_last_live_user_after_another_was_killed(tmp_path):
    pgdata = tmp_path / "pgdata"
    first = _holder(pgdata)
    killed = _holder(pgdata)
    postmaster = _postmaster(pgdata)
    assert postmaster is not None and postmaster.is_running()
    try:
        killed.kill()  # kill -9: its pid stays in pgserver's list of holders
        killed.wait(30)
        first.stdin.close()  # the last live user exits normally
        assert first.wait(60) == 0
        deadline = time.time() + 30
        while postmaster.is_running() and time.time() < deadline:
            time.sleep(0.2)
        assert not postmaster.is_running(), "PostgreSQL outlived every process that used it"
    finally:
        if postmaster.is_running():  # what the defect left: stop it here, not leave it to the machine
            os.kill(postmaster.pid, signal.SIGTERM)
            postmaster.wait(30)
