"""The CLI's contract with its users: one-line errors with exit code 2, no traceback, --help everywhere."""

import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lookalike.catalogue import load_catalogue
from lookalike.cli import main
from lookalike.errors import LookalikeError


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


ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_package_ships_the_run_configs(tmp_path, monkeypatch):
    """`--config fashion-products` (or the README's configs/fashion-products.json) works from any folder,
    because the wheel carries the config inside the package, where `load_config` looks for it."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", "dist"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("lookalike-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lookalike/configs/")}
    # the run config, `lookalike tune`'s default search space, and the augment.synonyms tables
    assert shipped == {
        "lookalike/configs/fashion-products.json",
        "lookalike/configs/tune-space.json",
        "lookalike/configs/synonyms/fashion-products.json",
        "lookalike/configs/synonyms/kfashion.json",
    }

    from lookalike.config import load_config

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    for name in ("fashion-products", "configs/fashion-products.json"):
        cfg = load_config(name)
        assert cfg.out_dir == "runs/fashion-products" and "articleType" in cfg.eval.extra_relevance
    with pytest.raises(LookalikeError, match="configs shipped with lookalike: fashion-products"):
        load_config("fashion-product")


def test_the_library_has_no_data_path_of_its_own():
    """Where a machine keeps its data is the CLI's to say (one place: $LOOKALIKE_DATA, else ../shared/data)."""
    from pydantic import ValidationError

    from lookalike.config import RunConfig
    from lookalike.studies.itembank import StudyConfig

    assert RunConfig().data.catalog is None
    with pytest.raises(ValidationError, match="data"):
        StudyConfig()
    with pytest.raises(LookalikeError, match="no catalogue given"):
        load_catalogue(RunConfig().data.catalog)


def test_commands_default_to_the_data_folder_in_lookalike_data(tmp_path, monkeypatch, fashion_subset):
    from lookalike.cli import build_parser
    from lookalike.cli.options import run_config

    monkeypatch.setenv("LOOKALIKE_DATA", str(tmp_path))
    (tmp_path / "fashion-products").symlink_to(fashion_subset)
    for argv in (["train"], ["train", "--config", "fashion-products"]):
        cfg = run_config(build_parser().parse_args(argv))
        assert cfg.data.catalog == str(tmp_path / "fashion-products"), argv
    given = run_config(build_parser().parse_args(["train", "--config", "fashion-products", "--catalog", "elsewhere"]))
    assert given.data.catalog == "elsewhere"


@pytest.mark.parametrize(
    "argv, flag, name",
    [
        (["train", "--no-progress"], "--catalog", "fashion-products"),
        (["embed", "--no-progress"], "--catalog", "fashion-products"),
        (["search", "--model", "MODEL", "--text", "shirt"], "--catalog", "fashion-products"),
        (["itembank", "search", "--text", "사과"], "--data", "kmwp/train.csv"),
    ],
)
def test_a_missing_default_data_folder_names_the_flag_to_give(argv, flag, name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOKALIKE_DATA", str(tmp_path / "no-data-here"))
    model = tmp_path / "model.pt"
    model.touch()  # only the data is missing
    with pytest.raises(SystemExit) as e:
        main([str(model) if a == "MODEL" else a for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.strip() == (
        f"lookalike: error: {flag} not given and the default {tmp_path / 'no-data-here' / name} does not exist: "
        f"give {flag} PATH (or set LOOKALIKE_DATA to the folder that holds {name})"
    )


def test_auth_add_prints_the_token_alone_on_stdout(tmp_path, capsys):
    """TOKEN=$(lookalike auth add ...) gets the token; the human lines go to stderr, and -q silences them."""
    tokens = tmp_path / "tokens.json"
    main(["auth", "add", "--scope", "write", "--file", str(tokens), "--name", "importer"])
    out = capsys.readouterr()
    (token,) = out.out.splitlines()
    assert len(token) >= 40 and " " not in token
    assert "added token" in out.err and "shown this once" in out.err
    main(["-q", "auth", "add", "--scope", "read", "--file", str(tokens)])
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 1 and out.err == ""


def test_catalog_ingest_prints_its_report_alone_on_stdout(tmp_path, capsys):
    """Its JSON report is the result (stdout); the load summary and the embedding counts are notes (stderr)."""
    from service_fixtures import trained

    t = trained()
    argv = ["catalog", "ingest", "--model", t["checkpoint"], "--catalog", str(t["catalog"]), "--no-progress"]
    main([*argv, "--store", f"embedded://{tmp_path / 'store'}"])
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["ingested"] == report["store_size"] == len(t["rows"]) and report["embedding"]["images_skipped"] == 0
    assert "loaded" in out.err and "cache hits" in out.err


def test_the_library_s_records_still_reach_the_root_logger_after_a_command(caplog):
    """A host calling main() (here pytest) keeps seeing lookalike's log records through its own handlers."""
    main(["models"])
    with caplog.at_level(logging.INFO, "lookalike"):
        logging.getLogger("lookalike.uploads").info("swept 0 temp files")
    assert "swept 0 temp files" in caplog.text
