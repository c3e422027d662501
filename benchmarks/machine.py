"""What every benchmark prints about the machine it ran on, measured when it runs (never a constant).

    from machine import Machine
    m = Machine.start("scale.py", markdown=args.markdown, onnxruntime=enc.threads)
    ...                      # the benchmark prints its figures
    m.table(markdown_text)   # with --markdown: the table to paste, alone on stdout
    m.finish()               # load at the end (and the highest seen during the run)

On a machine whose cores are shared, a figure means little without the load it was taken under: the
header names the CPU model, the cores this process may run on (`os.sched_getaffinity`, and a cgroup CPU
quota if one is set), the thread settings in effect (torch's intra-op / inter-op threads once torch is
imported, OMP / MKL / OpenBLAS / LOOKALIKE_THREADS from the environment, ONNX Runtime's intra-op threads
where the benchmark runs a session), the load average at the start and at the end, the highest 1-minute
load sampled during the run, and the commit (with `-dirty` when the tree has uncommitted changes).

With `markdown=True` everything else the benchmark prints goes to stderr, for the rest of the process,
so stdout carries exactly the table `table()` prints (and the one-line note under it saying which
command and machine printed it).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOOKALIKE_THREADS")
SAMPLE_S = 5.0  # how often the load average is sampled for the run's highest 1-minute load


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> dict:
    """Cores this process may run on, the machine's count, and a cgroup v2 CPU quota (in cores) if set."""
    out: dict = {"available": len(os.sched_getaffinity(0)), "machine": os.cpu_count()}
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            out["cgroup_quota"] = round(int(quota) / int(period), 2)
    except (OSError, ValueError):
        pass
    return out


def commit() -> str:
    """HEAD's short hash, `-dirty` when tracked files differ from it; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD"], capture_output=True).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def thread_settings(**extra) -> dict:
    """Thread settings in effect now: the environment's, torch's (only if already imported: importing it
    costs seconds), and whatever the benchmark passes (e.g. onnxruntime=its sessions' intra-op threads)."""
    out: dict = {k: os.environ.get(k, "unset") for k in THREAD_ENV}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_intra_op"] = torch.get_num_threads()
        out["torch_inter_op"] = torch.get_num_interop_threads()
    else:
        out["torch_intra_op"] = "torch not imported"
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _fmt_threads(t: dict) -> str:
    unset = [k for k in THREAD_ENV if t.get(k) == "unset"]
    parts = [f"{k}={v}" for k, v in t.items() if k not in unset]
    return ", ".join(parts + ([f"{' / '.join(unset)} unset"] if unset else []))


def _fmt_load(load: tuple[float, ...]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def _machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, every process together (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / hz, (idle + iowait) / hz


class _Descendants:
    """CPU seconds of this process's descendants (a local Ray's raylet, GCS, workers and actors), sampled
    every 0.1 s, so a process that exits inside the block still counts up to its last sample."""

    def __init__(self):
        import psutil

        self._me = psutil.Process()
        self._error = psutil.Error
        self.start = self._sample()
        self.seen = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="descendants-cpu", daemon=True)
        self._thread.start()

    def _sample(self) -> dict[int, float]:
        out = {}
        for p in self._me.children(recursive=True):
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except self._error:
                pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.seen.update(self._sample())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._sample())
        return sum(max(0.0, cpu - self.start.get(pid, 0.0)) for pid, cpu in self.seen.items())


class Stopwatch:
    """Wall seconds over a block, with this process's CPU seconds (all its threads) and the CPU seconds the
    whole machine spent busy meanwhile (every process, /proc/stat); with `children`, also the CPU seconds
    of this process's descendants (a local Ray's processes). On shared cores a throughput is (cores' worth
    of CPU the benchmark got) / (CPU seconds per item): `cores_used` and `cores_others` say which of the
    two moved when a figure moves."""

    def __init__(self, children: bool = False):
        self.children = children
        self.children_cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._desc = _Descendants() if self.children else None
        self._busy0, _ = _machine_cpu()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._cpu0
        self.machine_busy = _machine_cpu()[0] - self._busy0
        self.load_end = os.getloadavg()[0]
        if self._desc is not None:
            self.children_cpu = self._desc.stop()

    @property
    def cores_used(self) -> float:
        """Cores' worth of CPU this process used (its CPU seconds / wall seconds)."""
        return self.cpu / max(self.wall, 1e-9)

    @property
    def cores_others(self) -> float:
        """Cores' worth of CPU every other process used meanwhile (descendants, e.g. Ray's actors, included)."""
        return max(0.0, self.machine_busy - self.cpu) / max(self.wall, 1e-9)

    def as_dict(self) -> dict:
        return {
            "wall_s": round(self.wall, 2),
            "cpu_s": round(self.cpu, 2),
            **({"descendants_cpu_s": round(self.children_cpu, 2)} if self.children else {}),
            "cores_used": round(self.cores_used, 2),
            "cores_used_by_others": round(self.cores_others, 2),
            "load_1min_at_end": round(self.load_end, 2),
        }


class Machine:
    """The machine a benchmark runs on and its load over the run; see the module docstring."""

    def __init__(self, name: str, markdown: bool, threads: dict):
        self.name = name
        self.command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/" + name, *sys.argv[1:]])
        self.cpu = cpu_model()
        self.cores = cores()
        self.commit = commit()
        self._extra_threads = threads
        self.threads = thread_settings(**threads)
        self.load_start = os.getloadavg()
        self.load_end: tuple[float, ...] | None = None
        self.load_max = self.load_start[0]
        self.t0 = time.time()
        self._stdout: TextIO = sys.stdout
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="load-sampler", daemon=True)
        self._sampler.start()
        if markdown:
            sys.stdout = sys.stderr  # every other line is for humans; stdout holds only the table

    @classmethod
    def start(cls, name: str, markdown: bool = False, **threads) -> Machine:
        """Record and print the machine (to stderr when `markdown`, else with the benchmark's figures)."""
        m = cls(name, markdown, threads)
        print(m.header(), flush=True)
        return m

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.load_max = max(self.load_max, os.getloadavg()[0])

    def header(self) -> str:
        quota = f", cgroup quota {self.cores['cgroup_quota']} cores" if "cgroup_quota" in self.cores else ""
        return (
            f"machine: {self.cpu}; {self.cores['available']} cores available to this process (of "
            f"{self.cores['machine']}{quota}); threads: {_fmt_threads(self.threads)}\n"
            f"machine: load average (1 / 5 / 15 min) at start {_fmt_load(self.load_start)}; commit {self.commit}; "
            f"{platform.python_implementation()} {platform.python_version()}"
        )

    def note_threads(self, **threads) -> None:
        """Thread settings learnt after the start (e.g. an encoder built later)."""
        self._extra_threads = {**self._extra_threads, **threads}
        self.threads = thread_settings(**self._extra_threads)

    def summary(self) -> str:
        """One line for under a pasted table: the command, CPU, cores, threads and load of this run."""
        self.threads = thread_settings(**self._extra_threads)  # torch may have been imported since the start
        end = self.load_end or os.getloadavg()
        return (
            f"Printed by `{self.command}` at commit {self.commit}: {self.cpu}, {self.cores['available']} cores, "
            f"threads {_fmt_threads(self.threads)}; 1-minute load {self.load_start[0]:.2f} at start, "
            f"{end[0]:.2f} at end, at most {max(self.load_max, end[0]):.2f}."
        )

    def table(self, text: str) -> None:
        """Print a markdown table (and the summary line under it) on the real stdout."""
        self.load_end = os.getloadavg()
        print(text.rstrip("\n") + "\n\n" + self.summary(), file=self._stdout, flush=True)

    def finish(self) -> dict:
        """Print the load at the end; return everything recorded, for the benchmark's JSON report."""
        self._stop.set()
        before, self.threads = self.threads, thread_settings(**self._extra_threads)
        self.load_end = os.getloadavg()
        self.load_max = max(self.load_max, self.load_end[0])
        changed = f"; threads at end: {_fmt_threads(self.threads)}" if self.threads != before else ""
        print(
            f"machine: load average at end {_fmt_load(self.load_end)}; highest 1-minute load during the run "
            f"{self.load_max:.2f} (sampled every {SAMPLE_S:.0f} s); {time.time() - self.t0:.0f} s{changed}",
            flush=True,
        )
        return self.as_dict()

    def as_dict(self) -> dict:
        return {
            "command": self.command,
            "cpu": self.cpu,
            "cores": self.cores,
            "threads": self.threads,
            "commit": self.commit,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "load_max_1min": round(self.load_max, 2),
        }
