"""The CLI's contract with its users: one-line errors with exit code 2, no traceback, --help everywhere."""

import subprocess
import sys

import pytest

from lookalike.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--catalog", "/definitely/not/here", "--no-progress"],
            "catalogue path does not exist: /definitely/not/here",
        ),
        (["evaluate", "--model", "/nope.pt", "--catalog", "x", "--out", "y"], "checkpoint not found: /nope.pt"),
        (["train", "--config", "/nope.json"], "config file not found: /nope.json"),
        (
            ["train", "--quick", "--catalog", "synthetic:40", "--no-progress"],
            "PCA to 512 dims needs at least 512 training images",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # train writes runs/default/config.json before the PCA fails: not into the checkout
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    # progress lines may come first (the catalogue was loaded); the mistake is one line, the last, no traceback
    assert e.value.code == 2 and err[-1].startswith("lookalike: error: ")
    assert message in err[-1] and not any("Traceback" in line or "error" in line for line in err[:-1])


def test_cli_process_prints_no_traceback():
    r = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "search", "--model", "/nope.pt", "--text", "x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "lookalike: error: checkpoint not found: /nope.pt"


def test_help_everywhere(capsys):
    for cmd in ("train", "evaluate", "search", "centrality", "temperature-study", "sanity-check", "models"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0 and "usage: lookalike" in capsys.readouterr().out
