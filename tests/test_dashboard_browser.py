"""The dashboard page driven end to end in headless Chromium (Debian's, through Playwright).

The server needs a write token (reads stay open), as an operator would run it. Every console error and
page error fails the test it happens in, except the 4xx answers a test provokes on purpose and names."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest
from service_fixtures import ingest, make_app, trained

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def token(tmp_path_factory) -> tuple[str, str]:
    from lookalike.service.auth import add_token

    auth = tmp_path_factory.mktemp("auth") / "tokens.json"
    return str(auth), add_token(auth, "write")[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, token):
    import uvicorn

    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"embedded://{tmp}/store"
    ingest(url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(make_app(url, tmp, auth_file=token[0]), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


class Console:
    """Console messages of type error and uncaught page errors, as (text, url)."""

    def __init__(self):
        self.errors: list[tuple[str, str]] = []

    def expect(self, status: int, path: str) -> None:
        """Take the one 'Failed to load resource' error a test provoked on purpose (status on path)."""
        hit = [e for e in self.errors if f"status of {status}" in e[0] and e[1].split("?")[0].endswith(path)]
        assert hit, (status, path, self.errors)
        self.errors.remove(hit[0])


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Debian's chromium when installed, else Playwright's own build (./run test installs one of them).
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        pg = browser.new_page()
        console = Console()
        pg.on("console", lambda m: m.type == "error" and console.errors.append((m.text, m.location.get("url", ""))))
        pg.on("pageerror", lambda e: console.errors.append((str(e), "")))
        pg.goto(server + "/")
        pg.wait_for_selector("#catalogue-size .v")
        pg.wait_for_load_state("networkidle")
        yield pg, console
        browser.close()


@pytest.fixture
def console(browser_page):
    yield browser_page[1]
    browser_page[0].wait_for_load_state("networkidle")
    errors, browser_page[1].errors[:] = list(browser_page[1].errors), []
    assert not errors, f"console errors: {errors}"


@pytest.fixture
def page(browser_page, console):
    return browser_page[0]


def _images_loaded(page, selector: str) -> list[int]:
    # the grids' images load lazily, as a person scrolls to them (the dashboard is taller than the window)
    page.eval_on_selector_all(f"{selector} img", "imgs => imgs.forEach(i => i.scrollIntoView())")
    page.wait_for_function(f"[...document.querySelectorAll('{selector} img')].every(i => i.complete)")
    return page.eval_on_selector_all(f"{selector} img", "imgs => imgs.map(i => i.naturalWidth)")


def test_kpi_cards_charts_hyperparameters_and_samples(page):
    rows = trained()["rows"]
    assert page.inner_text("#catalogue-size .v") == str(len(rows))
    assert page.inner_text("#catalogue-new .v") == str(sum(int(r["year"]) >= 2016 for r in rows))
    assert "test MRR" in page.inner_text("#kpi-cards")
    cats = page.inner_text("#categories")
    assert "Topwear" in cats
    # the loss chart has drawn something: some pixels are not blank
    inked = page.evaluate("""() => { const c = document.getElementById('loss-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert inked > 500
    # train and validation loss, and the learning rate, each drawn in its own colour from the run's history
    for canvas, colour in (("loss-chart", (214, 39, 40)), ("loss-chart", (255, 127, 14)), ("lr-chart", (140, 86, 75))):
        drawn = page.evaluate(
            """([id, rgb]) => { const c = document.getElementById(id);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4)
              if (d[i] === rgb[0] && d[i + 1] === rgb[1] && d[i + 2] === rgb[2]) n++;
            return n; }""",
            [canvas, list(colour)],
        )
        assert drawn >= 12, (canvas, colour, drawn)  # one epoch: at least its 4×4 marker
    assert "train.epochs" in page.inner_text("#hyperparams") and "field_dropout" in page.inner_text("#hyperparams")
    assert "original:" in page.inner_text("#augmented")
    # a model trained by `train` (not `tune`, no image views): said so, nothing invented
    assert page.inner_text("#tuning") == "the served model did not come from lookalike tune"
    assert "no image views" in page.inner_text("#augmented")
    assert all(w > 0 for w in _images_loaded(page, "#recent"))
    # the online KPIs: their table's columns, and the new collection's coverage line
    assert "ctr@10" in page.inner_text("#online") and "new collection shown" in page.inner_text("#online-coverage")


def test_search_box_json_and_text_show_image_grids(page, console):
    page.fill("#search-input", json.dumps({"masterCategory": "Footwear", "gender": "Men"}))
    page.fill("#search-k", "6")
    page.click("#search-button")
    page.wait_for_selector("#result-summary")
    assert page.inner_text("#result-summary").startswith("6 results")
    widths = _images_loaded(page, "#search-results")
    assert len(widths) == 6 and all(w > 0 for w in widths)
    scores = [
        float(t.split("·")[1])
        for t in page.eval_on_selector_all("#search-results .hit div:nth-child(2)", "ds => ds.map(d => d.textContent)")
    ]
    assert scores == sorted(scores, reverse=True)
    page.fill("#search-input", "blue denim jeans")
    page.click("#search-button")
    page.wait_for_function(
        "document.querySelector('#result-summary') && document.querySelectorAll('#search-results img').length === 6"
    )
    page.fill("#search-input", '{"shape": "round"}')
    page.click("#search-button")
    page.wait_for_function("document.getElementById('search-error').textContent.length > 0")
    assert "400: attribute query has no known field" in page.inner_text("#search-error")
    console.expect(400, "/api/search")


def test_upload_box_recommends_new_products_for_a_photo(page, console, tmp_path):
    pid = next(r["id"] for r in trained()["rows"] if int(r["year"]) >= 2016)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((trained()["catalog"] / "images" / f"{pid}.jpg").read_bytes())
    page.set_input_files("#upload-input", str(photo))
    page.click("#upload-button")
    page.wait_for_function(
        "document.querySelector('#search-results .hit') && document.getElementById('search-error').textContent === ''"
    )
    first = page.inner_text("#search-results .hit div:nth-child(2)")
    assert first.startswith(f"{pid} · 1")
    assert all(w > 0 for w in _images_loaded(page, "#search-results"))
    page.set_input_files("#upload-input", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    page.click("#upload-button")
    page.wait_for_function("document.getElementById('search-error').textContent.includes('not a readable image')")
    console.expect(400, "/api/recommend/customer_input")


def test_writes_ask_for_a_token_and_work_with_one(page, console, token, tmp_path):
    pid = trained()["rows"][0]["id"]
    photo = tmp_path / "new.jpg"
    photo.write_bytes((trained()["catalog"] / "images" / f"{pid}.jpg").read_bytes())
    page.fill("#write-id", "dash-1")
    page.set_input_files("#write-image", str(photo))  # the default JSON has no subCategory: category "(none)"
    page.click("#add-button")
    page.wait_for_function("document.getElementById('write-error').textContent.length > 0")
    assert page.inner_text("#write-error").startswith("401: this endpoint needs a bearer token with scope 'write'")
    assert "paste it in the token field" in page.inner_text("#write-error")
    console.expect(401, "/api/items")
    page.fill("#token", token[1])
    page.click("#add-button")
    page.wait_for_function("document.getElementById('write-result').textContent === 'added dash-1'")
    n = len(trained()["rows"]) + 1
    page.wait_for_function(f"document.querySelector('#catalogue-size .v').textContent === '{n}'")
    rows = page.eval_on_selector_all("#categories tr", "rs => rs.map(r => r.textContent)")
    assert any(r.startswith("(none)1") for r in rows), rows
    page.click("#delete-button")
    page.wait_for_function("document.getElementById('write-result').textContent === 'deleted dash-1'")
    page.wait_for_function(f"document.querySelector('#catalogue-size .v').textContent === '{n - 1}'")
