"""Best sellers from purchase events: units per product and day kept in the events' own transaction (both event
logs), the window, duplicates counted once, new products passed over, and the best-seller-proxy check (Spearman of
centrality against units) equal to scipy's on the same data."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.stats import spearmanr
from store_servers import pg_url

from lookalike.evaluation.centrality import centrality_scores
from lookalike.recommend.events import DAY_S, parse_window
from lookalike.recommend.events import open_events as open_log
from lookalike.recommend.recommender import Recommender
from lookalike.recommend.statistics import BackgroundStatistics, compute_statistics, proxy_check
from lookalike.retrieval.stores import StoreItem, open_store

DIM = 8
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
N = 20  # products p00..p19; the even ones are new


def catalogue(url: str):
    rng = np.random.default_rng(1)
    store = open_store(url, dim=DIM)
    store.upsert([StoreItem(f"p{i:02d}", rng.standard_normal(DIM), {"is_new": i % 2 == 0}) for i in range(N)])
    return store


def buy(n: int, pid: str, days_ago: float = 0.0, tag: str = "") -> list[dict]:
    """`n` purchase events of `pid`, `days_ago` days before NOW."""
    ts = datetime.fromtimestamp(NOW - days_ago * DAY_S, UTC).isoformat()
    return [
        {
            "event_id": f"b-{pid}-{days_ago}-{tag}{j}",
            "customer_id": f"c{j}",
            "type": "purchase",
            "product_id": pid,
            "ts": ts,
        }
        for j in range(n)
    ]


@pytest.fixture(params=["embedded", pytest.param("pgvector", marks=pytest.mark.slow)])
def shop(request, tmp_path):
    url = f"embedded://{tmp_path}/store" if request.param == "embedded" else pg_url("sales")
    store = catalogue(url)
    log = open_log(store)
    yield store, log
    log.close()
    store.close()


def test_best_sellers_follow_units_over_the_window_and_count_a_duplicate_once(shop):
    _, log = shop
    assert log.best_sellers(30, 10, now=NOW) == ([], 0)
    batch = buy(3, "p01") + buy(5, "p03") + buy(1, "p05", days_ago=29.4) + buy(9, "p07", days_ago=45)
    assert log.add(batch, now=NOW).accepted == 18
    assert log.best_sellers(30, 10, now=NOW) == ([("p03", 5), ("p01", 3), ("p05", 1)], 3)  # p07: too old
    assert log.best_sellers(60, 1, now=NOW) == ([("p07", 9)], 4)
    # the same purchases again (a client retrying) and a batch holding one event twice: counted once
    again = log.add(buy(3, "p01") + buy(2, "p05", tag="x") + buy(1, "p05", tag="x"), now=NOW)
    assert (again.accepted, again.duplicates) == (2, 4)
    assert log.best_sellers(30, 10, now=NOW)[0] == [("p03", 5), ("p01", 3), ("p05", 3)]
    assert log.units_sold(30, now=NOW) == {"p03": 5, "p01": 3, "p05": 3}
    assert log.purchases() == 20


def test_top10_to_new_best_sellers_come_from_purchases_of_established_products(shop):
    store, log = shop
    rec = Recommender(store)
    assert rec.best_by_purchases(log, 30, 0.5, 10, now=NOW) == ([], 0)  # no purchase: the caller falls back
    log.add(buy(1, "p01") + buy(4, "p03") + buy(7, "p00") + buy(2, "p05") + buy(6, "p09", days_ago=40), now=NOW)
    # p00 is new: passed over; 4 products sold in the window, top 50% = 2
    assert rec.best_by_purchases(log, 30, 0.5, 10, now=NOW) == ([("p03", 4), ("p05", 2)], 4)
    assert rec.best_by_purchases(log, 30, 1.0, 2, now=NOW) == ([("p03", 4), ("p05", 2)], 4)
    assert rec.best_by_purchases(log, 60, 1.0, 10, now=NOW)[0] == [("p09", 6), ("p03", 4), ("p05", 2), ("p01", 1)]
    log.add(buy(10, "p01", tag="more"), now=NOW)  # more purchases change the best sellers at once
    assert rec.best_by_purchases(log, 30, 0.5, 10, now=NOW)[0] == [("p01", 11), ("p03", 4)]


def test_the_proxy_check_is_scipys_spearman_of_centrality_against_units(shop):
    store, log = shop
    ids, vectors, metadata = store.items()
    old = [j for j, m in enumerate(metadata) if m.get("is_new") is not True]
    central = dict(zip([ids[j] for j in old], centrality_scores(vectors[old])))
    units = {"p01": 3, "p03": 5, "p05": 1, "p07": 8, "p09": 2, "p11": 2, "p00": 4}  # p00: new, not in the check
    log.add([e for pid, n in units.items() for e in buy(n, pid)], now=NOW)
    stats = compute_statistics(store, health=False)
    sold = log.units_sold(30, now=NOW)
    check = proxy_check(stats, sold, 30)
    established = sorted(p for p in units if p != "p00")
    want = spearmanr([central[p] for p in established], [units[p] for p in established])
    assert check.n_products == 6 and check.units == 21
    assert check.spearman == pytest.approx(want.statistic, abs=1e-6)
    assert check.p_value == pytest.approx(want.pvalue, rel=1e-5)
    assert proxy_check(stats, {"p01": 1, "p03": 1, "p05": 1}, 30).spearman is None  # constant units: undefined


def test_the_background_statistics_recompute_the_check_when_purchases_move(tmp_path):
    store = catalogue(f"embedded://{tmp_path}/store")
    log = open_log(store)
    stats = BackgroundStatistics(store)
    stats.watch_sales(log.purchases, log.units_sold, 30)
    stats.refresh()
    assert stats.refresh_proxy() and stats.proxy is None  # no purchase yet
    assert not stats.refresh_proxy()  # nothing moved
    log.add(buy(3, "p01") + buy(1, "p03") + buy(2, "p05"))  # now: inside the window whatever the clock says
    assert stats.refresh_proxy() and stats.proxy is not None and stats.proxy.n_products == 3
    assert stats.proxy.spearman is not None
    log.close()
    store.close()


def test_a_log_written_before_the_sales_table_gets_its_purchases_counted_at_opening(tmp_path):
    store = catalogue(f"embedded://{tmp_path}/store")
    log = open_log(store)
    log.add(buy(2, "p01") + buy(1, "p03"), now=NOW)
    log.close()
    with sqlite3.connect(tmp_path / "store" / "events.sqlite") as db:
        db.execute("DROP TABLE sales")
    log = open_log(store)
    assert log.best_sellers(30, 10, now=NOW) == ([("p01", 2), ("p03", 1)], 2)
    log.close()
    store.close()


def test_the_window_is_read_as_days_or_weeks():
    assert (parse_window("30d"), parse_window("4w"), parse_window(7)) == (30, 28, 7)
    for bad in ("0d", "30x", "-3", "d"):
        with pytest.raises(ValueError, match="best-seller window"):
            parse_window(bad)
