"""Every command of README.md's ```bash blocks that can run on the shipped data runs here, as written, so an
example can never again name a product, flag or route that is not there.

The commands run in a sandbox laid out like the repository: `../shared/data/fashion-products` is the service
tests' real subset (every 330th product, see service_fixtures), `runs/fashion-products` is the run that trained
their small model (it stands in for `./run main`'s), `photo.jpg` and `sales.csv` are a real product photo and a
real sales table. `lookalike …` lines run in this process; `lookalike serve` runs as a real server on a free
port, and each `curl …` line runs the real curl against it: it must exit 0 with an HTTP 2xx answer.

A line is either run or listed in NOT_RUN with the reason; a new README command that is neither fails the test.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_fixtures import trained

from lookalike.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# Commands not run, by the start of their text (comments dropped, words joined by one space), with the reason.
NOT_RUN = {
    "./run main": "the full main job on 39,653 products (minutes); tests/test_pipeline.py runs it smaller",
    "./run test": "the test suite itself",
    "lookalike train ": "the main job (`./run main`); tests/test_pipeline.py runs it (run_main, --resume too) smaller",
    "lookalike temperature-study": "six trainings on the whole catalogue; tests/test_commands.py runs one on 200",
    "lookalike sanity-check": "600 images at full size, 8 epochs: 21 s of CPU; tests/test_commands.py runs it smaller",
    "lookalike serve --model $M --auth-file": "binds every interface (--host 0.0.0.0); tests/test_service_hardening.py "
    "serves with an auth file",
    "curl -H Authorization: Bearer $TOKEN": "needs the --auth-file server of the line above",
    "pip install": "installs into the environment",
    "lookalike embed --catalog /shared/photos --engine ray --address head-node:6379": "a Ray cluster's address",
    "lookalike catalog ingest --model $M --catalog /shared/photos --engine ray": "a Ray cluster and a database host",
    "lookalike serve --model $M --store postgresql://lookalike@db-host": "a database host; binds every interface",
    "lookalike finetune-classifier": "embeds all 11,815 smile images, then trains; tests/test_classify_finetune.py "
    "runs it on a subset",
    "lookalike ab": "needs the fine-tuned model of the line above; tests/test_classify_finetune.py runs it",
    "lookalike itembank study": "the whole item-bank study (an LLM judge URL); tests/test_itembank_study.py runs it",
    "lookalike itembank search": "embeds the whole KMWP bank (2,538 problems, ~12 s of CPU); "
    "tests/test_itembank_study.py searches a smaller bank",
    "lookalike itembank bench": "a 1,000-query benchmark on a placeholder store (/abs/pgdata)",
    "lookalike serve --itembank": "embeds the whole KMWP bank, then serves; tests/test_itembank_api.py serves a slice",
    "lookalike serve --model $M --itembank": "a placeholder bank and store; tests/test_itembank_api.py serves both",
    "lookalike itembank review": "embeds the whole KMWP bank; tests/test_itembank_review.py exports and imports a "
    "slice",
    "lookalike compare-towers": "eight trainings on 1,500 products; tests/test_studies.py runs it on 200",
    "lookalike compare-rerankers": "a placeholder checkpoint (runs/x); tests/test_studies.py runs it",
    "python benchmarks/towers.py": "the full tower study (a benchmark)",
    "lookalike tune --catalog PATH": "the synopsis; the next line runs a tiny study, tests/test_tune.py the rest",
    "lookalike tune --storage postgresql://lookalike@db-host": "a database host; tests/test_tune_engines.py shares "
    "a study between two processes on pgserver",
    "lookalike tune --engine ray --address head-node:6379": "a Ray cluster's address; tests/test_tune_engines.py "
    "runs it on a local Ray",
    "lookalike events import events.csv": "an events file; tests/test_events.py imports CSV and JSONL files",
    "lookalike serve --model $M --experiment": "an experiment file; tests/test_service_events.py serves one",
    "lookalike experiment report": "an experiment file; tests/test_service_events.py reports one",
    "lookalike evaluate-sessions": "an events file; tests/test_profile.py replays one",
    "lookalike train-user-tower": "an events file; tests/test_user_tower.py trains on one",
    "lookalike serve --model $M --search approximate --reranker": "tests/test_s2_serving.py serves the reranker and "
    "compares its lists with the CLI's",
    "lookalike serve --model $M --adapter": "tests/test_s2_serving.py serves adapted stores (embedded and pgvector)",
    "lookalike ensemble": "needs two trained runs (runs/a, runs/b); tests/test_research_loop.py builds and uses one",
    ".venv/bin/pip": "installs into the environment",
}
# Whole words of synopsis lines that stand for a value, and what stands in for them here.
PLACEHOLDERS = {
    "CKPT": "runs/fashion-products/checkpoints/best_model.pt",
    "PATH": "../shared/data/fashion-products",
    "DIR": "runs/evaluation",
}
# Optional groups of synopsis lines ([--flag value]) that are left out; every other group is given, with the
# first of its alternatives (local|ray → local).
LEFT_OUT = {"--address HOST:PORT": "a Ray cluster's address"}
# Values the README's lines take from what an earlier line made: the server's address (the README's default port
# is taken here by a free one) and the id of the token `lookalike auth add` made.
SERVER = "http://127.0.0.1:8000"
TOKEN_ID = "1f2e3d4c"


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, words) of every command in README.md's bash blocks, in order: comments dropped,
    continuation lines joined, `a; b` split into two commands."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
        first = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).split("\n")
        i = 0
        while i < len(lines):
            start, line = first + i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i]
            i += 1
            lex = shlex.shlex(line, posix=True, punctuation_chars=";")
            lex.whitespace_split = True
            words: list[str] = []
            for w in [*lex, ";"]:
                if w != ";":
                    words.append(w)
                elif words:
                    out.append((start, words))
                    words = []
    return out


def not_run(words: list[str]) -> str | None:
    text = " ".join(words)
    return next((why for start, why in NOT_RUN.items() if text.startswith(start)), None)


def synopsis(words: list[str]) -> list[str]:
    """A synopsis line as a command: placeholders filled, optional groups given (or left out, see LEFT_OUT)."""
    out, group = [], None
    for w in words:
        if w.startswith("[") and group is None:
            group, w = [], w[1:]
        if group is None:
            out.append(PLACEHOLDERS.get(w, w))
            continue
        end = w.endswith("]")
        group.append(w.rstrip("]").split("|")[0])
        if end:
            if " ".join(group) not in LEFT_OUT:
                out += [PLACEHOLDERS.get(g, g) for g in group]
            group = None
    return out


def test_every_readme_command_is_run_or_listed_with_its_reason():
    commands = readme_commands()
    assert len(commands) > 30  # the parser found the blocks
    texts = [" ".join(w) for _, w in commands]
    stale = [start for start in NOT_RUN if not any(t.startswith(start) for t in texts)]
    assert not stale, f"NOT_RUN names commands the README no longer has: {stale}"
    for line, words in commands:
        if not_run(words) is None:
            assert words[0] in ("lookalike", "curl") or re.fullmatch(r"[A-Z]+=\S+", words[0]), (
                f"README.md line {line}: {' '.join(words)!r} is neither run by this test nor listed in NOT_RUN"
            )
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert all(f"[{g}]" in readme for g in LEFT_OUT), "LEFT_OUT names a group the README no longer has"
    assert f"S={SERVER}" in readme and f"auth revoke {TOKEN_ID} " in readme


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A repository-like folder whose ../shared/data and runs/ hold the small real catalogue and model."""
    t = trained()
    root = tmp_path_factory.mktemp("readme")
    repo, data = root / "repo", root / "shared" / "data"
    (repo / "runs").mkdir(parents=True)
    data.mkdir(parents=True)
    # A folder of its own, as shipped (styles.csv beside a link to the real images). A catalogue folder that is
    # itself a link serves no image today: the loader resolves its root, the server's image check does not.
    (data / "fashion-products").mkdir()
    shutil.copyfile(t["catalog"] / "styles.csv", data / "fashion-products" / "styles.csv")
    (data / "fashion-products" / "images").symlink_to(SHARED / "fashion-products" / "images")
    for name in ("kmwp", "smiles"):
        (data / name).symlink_to(SHARED / name)
    (repo / "configs").symlink_to(REPO / "configs")
    (repo / "runs" / "fashion-products").symlink_to(Path(t["checkpoint"]).parent.parent)
    assert (repo / "runs/fashion-products/checkpoints/best_model.pt").resolve() == Path(t["checkpoint"]).resolve()
    old = [r["id"] for r in t["rows"] if int(r["year"]) < 2016]
    shutil.copyfile(t["catalog"] / "images" / f"{old[-1]}.jpg", repo / "photo.jpg")
    (repo / "sales.csv").write_text("id,sales\n" + "".join(f"{p},{10 * i + 3}\n" for i, p in enumerate(old[:5])))
    return repo


def _lookalike(argv: list[str]) -> tuple[int, str, str]:
    """One `lookalike` command in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _serve(argv: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", *argv, "--port", str(port)],
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "LOOKALIKE_THREADS": "1"},
    )
    base, deadline = f"http://127.0.0.1:{port}", time.time() + 120
    while True:
        assert proc.poll() is None, f"`lookalike {' '.join(argv)}` ended: {log.read_text()[-2000:]}"
        assert time.time() < deadline, f"`lookalike {' '.join(argv)}` did not answer within 120 s"
        try:
            if httpx.get(f"{base}/api/items?limit=1", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)


@pytest.mark.slow  # a served model
def test_readme_commands_run_on_the_shipped_data(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    env: dict[str, str] = {}
    servers: list[subprocess.Popen] = []
    served = ""
    failures, ran = [], []

    def expand(word: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: env[m.group(1)], word)

    try:
        for line, words in readme_commands():
            if not_run(words):
                continue
            where = f"README.md line {line}: {' '.join(words)}"
            if re.fullmatch(r"[A-Z]+=\S+", words[0]) and len(words) == 1:
                name, value = words[0].split("=", 1)
                env[name] = served if value == SERVER else value
                continue
            argv = [env["TOKEN_ID"] if w == TOKEN_ID else expand(w) for w in synopsis(words)]
            if argv[0] == "curl":
                # --retry: as a client should, wait out a 503 + Retry-After (the first seconds after start-up,
                # while the catalogue statistics are computed); any other failure fails at once
                retry = ["--retry", "10", "--retry-max-time", "60"]
                r = subprocess.run(
                    ["curl", "-sS", "--max-time", "60", *retry, "--write-out", "\n%{http_code}", *argv[1:]],
                    capture_output=True,
                    text=True,
                )
                status = r.stdout.rsplit("\n", 1)[-1]
                if r.returncode or not status.startswith("2"):
                    answer = (r.stdout.rsplit("\n", 1)[0] + r.stderr)[-500:]
                    failures.append(f"{where}\n  curl exit {r.returncode}, HTTP {status}: {answer}")
            elif argv[1] == "serve":
                proc, served = _serve(argv[1:], sandbox, sandbox / f"serve-{line}.log")
                servers.append(proc)
            else:
                code, out, err = _lookalike(argv[1:])
                if code:
                    failures.append(f"{where}\n  exit {code}: {err[-500:]}")
                if argv[1:3] == ["auth", "add"] and not code:
                    env["TOKEN"] = out.strip().splitlines()[-1]
                    env["TOKEN_ID"] = re.search(r"added token (\S+)", err).group(1)  # a human line: stderr
            ran.append(" ".join(argv))
    finally:
        for proc in servers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    assert not failures, "\n".join(failures)
    assert any(c.startswith("curl") for c in ran) and any(" serve " in f" {c} " for c in ran)
