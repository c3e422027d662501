"""Shared fixtures. Tests use real data from ../shared/data, real weights and a private embedding cache."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One scratch folder per test run, made by the process that starts it; the xdist workers inherit it
# through the environment, so they share one embedding cache and one copy of what service_fixtures
# trains. The starting process removes it when the run ends.
if "LOOKALIKE_TEST_RUN" not in os.environ:
    os.environ["LOOKALIKE_TEST_RUN"] = tempfile.mkdtemp(prefix="lookalike-test-run-")
    atexit.register(shutil.rmtree, os.environ["LOOKALIKE_TEST_RUN"], True)
os.environ.setdefault("LOOKALIKE_CACHE", os.path.join(os.environ["LOOKALIKE_TEST_RUN"], "cache"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers split the cores: each runs its inference and BLAS on one thread instead of all fighting
    # over all of them (that oversubscription made the suite ~20% slower on 2 cores).
    for var in ("LOOKALIKE_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FASHION = SHARED / "fashion-products"


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    assert (FASHION / "styles.csv").exists(), f"the real catalogue is expected at {FASHION}"
    return FASHION


@pytest.fixture(scope="session")
def fashion_subset(fashion_dir, tmp_path_factory) -> Path:
    """Every 8th product of the real catalogue (~5,000), same layout: tests that train on a few hundred
    products need not read all 39,653 rows (1.8 s a load) each time."""
    lines = (fashion_dir / "styles.csv").read_text(encoding="utf-8").splitlines()
    out = tmp_path_factory.mktemp("fashion-subset")
    (out / "styles.csv").write_text("\n".join([lines[0], *lines[1::8]]) + "\n", encoding="utf-8")
    (out / "images").symlink_to(fashion_dir / "images")
    return out


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from lookalike.catalogue.synthetic import synthetic_catalogue

    return synthetic_catalogue(n=240, seed=3, image_dir=tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def one_thread():
    """Toy-sized torch work: intra-op threads only add synchronisation (10× slower on a busy 2-core box)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The longest modules (measured with --durations) start first: xdist hands whole modules to the workers in
# collection order (`--dist loadscope --no-loadscope-reorder` in pyproject.toml), so started last one of
# them kept a single worker busy for half a minute after the other had finished.
LONGEST_FIRST = (
    "test_readme.py",
    "test_tune_engines.py",
    "test_ray_engine.py",
    "test_tune.py",
    "test_tune_ensemble.py",
    "test_research_loop.py",
    "test_service_api.py",
    "test_pipeline.py",
    "test_itembank_study.py",
    "test_dashboard_browser.py",
    "test_classify_finetune.py",
    "test_commands.py",
    "test_encoders.py",
    "test_studies.py",
)


# Modules that pay the same costly per-process start-up run on one worker, as one unit, so it is paid once:
# loading Kiwi's morphological analyser (2 s of CPU), importing transformers' model classes (2.5 s).
SAME_WORKER = {
    "test_itembank_study.py": "kiwi",
    "test_bm25_korean.py": "kiwi",
    "test_clip_encoders.py": "transformers",
    "test_itembank_models.py": "transformers",
}


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


def pytest_xdist_make_scheduler(config, log):
    """xdist's module scheduling (`--dist loadscope`), with the modules of SAME_WORKER joined into one unit."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(module.rsplit("/", 1)[-1], module)

    return ModuleGroups(config, log)


def pytest_unconfigure(config):
    """The process is about to end: its last garbage collections would walk every object that torch, Ray,
    Kiwi … made (about 2 s a worker, while the run waits for it), so they skip what exists now."""
    gc.freeze()
