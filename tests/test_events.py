"""The event log beside both stores: validation with reasons, idempotency on event_id, attribution to served lists,
the KPI counters kept in the events' own transaction, customer histories, and `lookalike events import`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from store_servers import pg_url

from lookalike.cli import main
from lookalike.recommend.events import online_kpi, open_events
from lookalike.retrieval.stores import StoreItem, open_store

DIM = 8
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


def catalogue(url: str):
    rng = np.random.default_rng(0)
    store = open_store(url, dim=DIM)
    store.upsert([StoreItem(f"p{i}", rng.standard_normal(DIM), {"is_new": i % 2 == 0}) for i in range(6)])
    return store


def ev(i: int, kind: str = "click", pid: str = "p0", customer: str = "c1", **extra) -> dict:
    return {
        "event_id": f"e{i}",
        "customer_id": customer,
        "type": kind,
        "product_id": pid,
        "ts": f"2026-12-01T10:{i % 60:02d}:00Z",
        **extra,
    }


@pytest.fixture(params=["embedded", pytest.param("pgvector", marks=pytest.mark.slow)])
def log(request, tmp_path):
    url = f"embedded://{tmp_path}/store" if request.param == "embedded" else pg_url("events")
    store = catalogue(url)
    log = open_events(store)
    yield log
    log.close()
    store.close()


def test_bad_events_are_rejected_with_reasons_and_nothing_of_them_is_stored(log):
    batch = [
        ev(1),
        ev(2, pid="nope"),
        ev(3, kind="like"),
        {**ev(4), "ts": "yesterday"},
        {**ev(5), "ts": "2027-01-01T00:00:00Z"},
        {k: v for k, v in ev(6).items() if k != "customer_id"},
        "not an object",
    ]
    res = log.add(batch, now=NOW)
    assert res.accepted == 1 and res.duplicates == 0
    reasons = {r["index"]: r["reason"] for r in res.rejected}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert reasons[1] == "unknown product id 'nope'"
    assert reasons[2].startswith("unknown event type 'like'")
    assert reasons[3] == "malformed timestamp 'yesterday'"
    assert reasons[4].endswith("is in the future")
    assert reasons[5] == "missing customer_id"
    assert log.count_stored([f"e{i}" for i in range(1, 7)]) == 1
    assert log.kpi()["events"] == 1


def test_events_are_idempotent_on_event_id(log):
    assert log.add([ev(1), ev(2), ev(1)], now=NOW).to_json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert log.add([ev(2), ev(3)], now=NOW).to_json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert log.count_stored(["e1", "e2", "e3"]) == 3
    assert log.kpi()["per_endpoint"]["unattributed"]["clicks"] == 3  # a duplicate counted nothing


def test_events_citing_a_served_list_move_its_endpoint_and_variant_kpis(log):
    log.served("r1", "customer_input", ["p0", "p2", "p4"], variant="B", customer_id="c1")
    log.served("r2", "customer_input", ["p2"], variant="A")
    log.served("r1", "customer_input", ["p0"], variant="B")  # the same request logged again: once
    log.add(
        [
            ev(1, "impression", "p0", request_id="r1"),
            ev(2, "impression", "p2", request_id="r1"),
            ev(3, "click", "p2", request_id="r1"),
            ev(4, "click", "p4", request_id="r1"),  # a second click on the list: the list is counted once
            ev(5, "click", "p5", request_id="r2"),  # not in r2's list: a click, but not a clicked list
            ev(6, "purchase", "p4", request_id="r1"),
            ev(7, "cart", "p1"),
            ev(8, "impression", "p0", request_id="r2"),  # p0 already shown: coverage counts it once
        ],
        now=NOW,
    )
    k = log.kpi(new_products=3)
    b = k["per_variant"]["B"]
    assert (b["impressions"], b["clicks"], b["purchases"], b["lists_served"]) == (2, 2, 1, 1)
    assert (b["ctr"], b["ctr@10"], b["purchase_rate"]) == (1.0, 1.0, 1.0)
    a = k["per_variant"]["A"]
    assert (a["clicks"], a["lists_served"], a["lists_clicked"], a["ctr@10"]) == (1, 1, 0, 0.0)
    ep = k["per_endpoint"]["customer_input"]
    assert (ep["impressions"], ep["clicks"], ep["lists_served"], ep["lists_clicked"]) == (3, 3, 2, 1)
    assert k["per_endpoint"]["unattributed"]["carts"] == 1 and k["per_variant"]["none"]["carts"] == 1
    assert k["new_collection"] == {"shown": 2, "size": 3, "coverage": 0.6667}  # p0 and p2 are new; p1 is not
    assert k == online_kpi(log.counters(), 3)


def test_a_customers_history_is_read_newest_last(log):
    log.add([ev(3, "click", "p1"), ev(1, "cart", "p2"), ev(2, "impression", "p3")], now=NOW)
    log.add([ev(4, "purchase", "p4", customer="c2")], now=NOW)
    assert [(p, t) for p, t, _ in log.history("c1")] == [("p2", "cart"), ("p1", "click")]
    assert log.history("c1", limit=1)[0][0] == "p1"
    assert log.history("nobody") == []


def test_events_import_counts_bad_rows_by_reason(tmp_path, capsys):
    url = f"embedded://{tmp_path}/store"
    catalogue(url).close()
    f = tmp_path / "events.csv"
    f.write_text(
        "event_id,customer_id,type,product_id,ts\n"
        "a1,c1,click,p0,2026-11-30T10:00:00Z\n"
        "a2,c1,purchase,p1,2026-11-30T10:05:00\n"
        "a1,c1,click,p0,2026-11-30T10:00:00Z\n"
        "a3,c1,click,p77,2026-11-30T10:00:00Z\n"
        "a4,c1,click,p88,2026-11-30T10:00:00Z\n"
        "a5,c1,like,p0,2026-11-30T10:00:00Z\n"
        "a6,c1,click,p0,not-a-time\n",
        encoding="utf-8",
    )
    main(["events", "import", str(f), "--store", url])
    rep = json.loads(capsys.readouterr().out)
    assert (rep["rows"], rep["accepted"], rep["duplicates"], rep["rejected"]) == (7, 2, 1, 4)
    assert rep["rejected_by_reason"] == {"unknown product id": 2, "unknown event type": 1, "malformed timestamp": 1}
    assert rep["first_line_by_reason"]["unknown product id"] == 5
    j = tmp_path / "more.jsonl"
    j.write_text(json.dumps(ev(9, "cart", "p3")) + "\n{not json\n[1]\n", encoding="utf-8")
    main(["events", "import", str(j), "--store", url])
    rep = json.loads(capsys.readouterr().out)
    assert (rep["accepted"], rep["rejected_by_reason"]) == (1, {"malformed JSON line": 2})
    store = open_store(url)
    log = open_events(store)
    assert [p for p, _, _ in log.history("c1")] == ["p0", "p1", "p3"]
    log.close()


def test_events_import_names_a_missing_column(tmp_path, capsys):
    url = f"embedded://{tmp_path}/store"
    catalogue(url).close()
    f = tmp_path / "events.csv"
    f.write_text("event_id,customer_id,product_id\na,b,p0\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["events", "import", str(f), "--store", url])
    assert "lacks column(s) ['type', 'ts']" in capsys.readouterr().err
