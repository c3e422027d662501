"""How long the test suite takes: the quick tier (`./run test --quick`: unit tests, nothing that trains, serves or
starts Ray, PostgreSQL or a browser) and the whole suite (what CI runs), each timed in rounds.

    python benchmarks/suite.py [--rounds 3] [--tiers quick,full] [--markdown]

The suite runs as `./run test` runs it (pytest with the options in pyproject.toml, on every core), from the
venv this script runs in; the lint, format, type and import checks that `./run test` runs first are timed
apart (`--tiers checks`). Wall time depends on what else the cores do, so every round prints the CPU time
of the run's processes beside it, and the machine line gives the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import ROOT, Machine

BIN = Path(sys.executable).parent
TIERS = {
    "quick": [sys.executable, "-m", "pytest", "-m", "not slow", "-p", "no:cacheprovider"],
    "full": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
    "checks": [  # what ./run test runs before the tests, one after the other
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "."],
        [str(BIN / "mypy")],
        [str(BIN / "lint-imports")],
    ],
}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmds: list) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the processes it ran, and pytest's last line (or the checks' verdict)."""
    cmds = cmds if isinstance(cmds[0], list) else [cmds]
    cpu0, t0 = children_cpu(), time.perf_counter()
    last = ""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as ./run does: bytecode cached
    for cmd in cmds:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd[-3:])} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        last = (r.stdout.strip().splitlines() or [""])[-1]
    return time.perf_counter() - t0, children_cpu() - cpu0, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiers", default="checks,quick,full", help="comma-separated: checks, quick, full")
    ap.add_argument("--markdown", action="store_true", help="print the table to paste into the README")
    args = ap.parse_args()
    machine = Machine.start("suite.py", args.markdown)
    rows = []
    for tier in args.tiers.split(","):
        if tier not in TIERS:
            raise SystemExit(f"unknown tier {tier!r}; choose from {sorted(TIERS)}")
        walls, cpus, last = [], [], ""
        for r in range(args.rounds):
            wall, cpu, last = timed(TIERS[tier])
            walls.append(wall)
            cpus.append(cpu)
            print(
                f"{tier} round {r + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.2f}: {last}",
                file=sys.stderr,
            )
        rows.append(
            f"| {tier} | {last} | {min(walls):.1f} / {sorted(walls)[len(walls) // 2]:.1f} / {max(walls):.1f} s | "
            f"{sorted(cpus)[len(cpus) // 2]:.1f} s |"
        )
    machine.table(
        "\n".join(
            [
                f"| tier | result | wall, {args.rounds} rounds: min / median / max | CPU (median) |",
                "|---|---|---|---|",
                *rows,
            ]
        )
    )
    machine.finish()


if __name__ == "__main__":
    main()
