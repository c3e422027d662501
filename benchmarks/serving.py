"""What the service benchmarks share: a real `lookalike serve` subprocess on a free loopback port, and a
schemathesis run against its OpenAPI schema that counts the 5xx answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lookalike serve` in a subprocess on 127.0.0.1; started() waits until /api/auth answers."""

    def __init__(
        self, model: str, store: str, catalog: str, upload_dir: Path, *extra: str, cache_dir: str | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **({"LOOKALIKE_CACHE": cache_dir} if cache_dir else {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lookalike.cli",
                "serve",
                "--model",
                model,
                "--store",
                store,
                "--catalog",
                catalog,
                "--upload-dir",
                str(upload_dir),
                "--port",
                str(self.port),
                *extra,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def started(self, timeout: float = 180) -> Server:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lookalike serve exited {self.proc.returncode}: {self.proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/api/auth", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("lookalike serve did not answer in time")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


def schemathesis(base_url: str, examples: int, work: Path, headers: dict[str, str] | None = None) -> dict:
    """`st run` (check not_a_server_error) over every operation; the 5xx count comes from its HAR report."""
    st = Path(sys.executable).with_name("st")
    har = work / "schemathesis.har"
    t = time.perf_counter()
    run = subprocess.run(
        [
            str(st),
            "run",
            f"{base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-n",
            str(examples),
            "--seed",
            "1",
            "--wait-for-schema",
            "120",
            "--report",
            "har",
            "--report-har-path",
            str(har),
            *[a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")],
        ],
        capture_output=True,
        text=True,
    )
    (work / "schemathesis.txt").write_text(run.stdout + run.stderr)
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    statuses = [e["response"]["status"] for e in entries]
    summary = [ln for ln in run.stdout.strip().splitlines() if "generated" in ln or "passed" in ln or "failed" in ln][
        -3:
    ]
    return {
        "exit_code": run.returncode,
        "requests": len(statuses),
        "5xx": sum(s >= 500 for s in statuses),
        "summary": summary,
        "seconds": round(time.perf_counter() - t, 1),
    }
