"""`lookalike events import` (backfill the event log from a CSV / JSON Lines file); the personalisation commands
plug in here (added to the CLI by service/commands.py)."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from lookalike.errors import LookalikeError
from lookalike.recommend.events import read_rows

logger = logging.getLogger(__name__)

BATCH = 500


def reason_kind(reason: str) -> str:
    """A rejection reason without the value it names ("unknown product id '12'" → "unknown product id")."""
    return " ".join(re.sub(r"'[^']*'|\"[^\"]*\"|\([^)]*\)|:.*$", " ", reason).split())


def import_events(log, path: Path) -> dict:
    """Every row of the file through the log's own checks, in batches; bad rows counted by reason."""
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    batch: list = []
    lines: list[int] = []
    first_bad: dict[str, int] = {}

    def flush() -> None:
        res = log.add(batch)
        totals["accepted"] += res.accepted
        totals["duplicates"] += res.duplicates
        for r in res.rejected:
            kind = reason_kind(r["reason"])
            reasons[kind] += 1
            first_bad.setdefault(kind, lines[r["index"]])
        batch.clear()
        lines.clear()

    for n, row in read_rows(path):
        totals["rows"] += 1
        if row is None:
            reasons["malformed JSON line"] += 1
            first_bad.setdefault("malformed JSON line", n)
            continue
        batch.append(row)
        lines.append(n)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return {
        "file": str(path),
        "rows": totals["rows"],
        "accepted": totals["accepted"],
        "duplicates": totals["duplicates"],
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(reasons.most_common()),
        "first_line_by_reason": first_bad,
    }


def cmd_events_import(args) -> None:
    from lookalike.recommend.events import open_events
    from lookalike.retrieval.stores import open_store
    from lookalike.service.commands import _url

    store = open_store(_url(args.store))
    log = open_events(store)
    try:
        rep = import_events(log, Path(args.file))
    finally:
        log.close()
        store.close()
    logger.info(
        f"{rep['rows']} rows: {rep['accepted']} stored, {rep['duplicates']} duplicates, {rep['rejected']} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in rep['rejected_by_reason'].items())})" if rep["rejected"] else "")
    )
    print(json.dumps(rep, indent=1))


def cmd_recommend(args) -> None:
    import numpy as np

    from lookalike.recommend.profile import History, ProfileSettings
    from lookalike.recommend.recommender import Recommender
    from lookalike.retrieval.stores import open_store
    from lookalike.service.commands import _url

    store = open_store(_url(args.store))
    try:
        items = store.get_many(args.history)
        missing = [i for i, it in zip(args.history, items) if it is None]
        if missing:
            raise LookalikeError(f"unknown product id(s) {missing[:10]} in --history")
        history = History(
            np.stack([it.vector for it in items if it is not None]),
            ["click"] * len(items),
            [None] * len(items),
            list(args.history),
            list(args.history),
        )
        res = Recommender(store).for_history(
            history,
            args.k,
            args.profile,
            ProfileSettings(interest_fields=tuple(args.interest_fields)),
            diversity=args.diversity,
            exclude_ids=list(dict.fromkeys(args.history)),
        )
    finally:
        store.close()
    if args.format == "json":
        out = {
            "profile": args.profile,
            "interests": res["interests"],
            "items": [
                {
                    "id": i,
                    "score": round(s, 5),
                    "interest": j,
                    "attributes": {k: v for k, v in md.items() if k != "image"},
                }
                for (i, s, md), j in zip(res["items"], res["item_interests"])
            ],
            "intra_list_diversity": res["intra_list_diversity"],
        }
        print(json.dumps(out, ensure_ascii=False))
        return
    for j, it in enumerate(res["interests"]):
        logger.info(f"interest {j}: weight {it['weight']}, {it['size']} event(s), medoid {it['medoid']}")
    for rank, ((i, s, _), j) in enumerate(zip(res["items"], res["item_interests"]), 1):
        print(f"{rank:>3}  {i:<14} {s:.4f}  interest {j}")


def cmd_experiment_report(args) -> None:
    from lookalike.recommend.events import open_events
    from lookalike.recommend.experiments import Experiment
    from lookalike.retrieval.stores import open_store
    from lookalike.service.commands import _url

    exp = Experiment.load(args.experiment)
    store = open_store(_url(args.store))
    log = open_events(store)
    try:
        rep = exp.report(log.counters(), alpha=args.alpha)
    finally:
        log.close()
        store.close()
    if args.format == "json":
        print(json.dumps(rep, indent=1))
        return

    def pct(x) -> str:
        return "–" if x is None else f"{100 * x:.2f}%"

    print(
        f"experiment {rep['experiment']} (α {rep['alpha']}, power {rep['power']}, "
        f"worth detecting {pct(rep['min_effect'])})"
    )
    for name, v in rep["variants"].items():
        cells = []
        for m in ("ctr@10", "purchase_rate"):
            r = v[m]
            ci = f" [{pct(r['ci'][0])}, {pct(r['ci'][1])}]" if r["ci"] else ""
            cells.append(f"{m} {pct(r['rate'])}{ci}")
        print(f"  {name:<16} lists {v['lists_served']:>7}  " + "  ".join(cells))
    for name, comp in rep["comparisons"].items():
        for m, c in comp.items():
            if "difference" not in c:
                print(f"  {name} {m}: no lists yet")
                continue
            call = "too early to call" if c["too_early"] else ("significant" if c["significant"] else "no difference")
            print(
                f"  {name} {m}: {100 * c['difference']:+.2f} points "
                f"[{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}], p {c['p_value']:.4f}, MDE {pct(c['mde'])}: {call}"
            )


def cmd_evaluate_sessions(args) -> None:
    from lookalike.recommend.sessions import replay
    from lookalike.retrieval.stores import open_store
    from lookalike.service.commands import _url

    rows = [r for _, r in read_rows(Path(args.events)) if r is not None]
    store = open_store(_url(args.store))
    try:
        rep = replay(rows, store, k=args.k, max_cases=args.max_cases)
    finally:
        store.close()
    for m, r in rep["methods"].items():
        logger.info(f"{m}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    print(json.dumps({"events": args.events, **rep}, indent=1))


def add_commands(sub) -> None:
    from lookalike.service.commands import DEFAULT_STORE

    e = sub.add_parser("events", help="customers' events beside the catalogue: import")
    esub = e.add_subparsers(dest="events_command", required=True)
    i = esub.add_parser("import", help="backfill events from a CSV or JSON Lines file (bad rows counted by reason)")
    i.add_argument("file", help="CSV (columns event_id,customer_id,type,product_id,ts[,request_id,variant]) or .jsonl")
    i.add_argument("--store", default=DEFAULT_STORE, help=f"the catalogue's store URL (default {DEFAULT_STORE})")
    i.set_defaults(func=cmd_events_import)

    r = sub.add_parser(
        "recommend", help="new products for a customer's history (as POST /api/recommend/customer_input)"
    )
    r.add_argument(
        "--history", nargs="+", required=True, metavar="ID", help="products the customer clicked, oldest first"
    )
    r.add_argument("--store", default=DEFAULT_STORE, help=f"the catalogue's store URL (default {DEFAULT_STORE})")
    r.add_argument("-k", type=int, default=10, help="results (default 10)")
    r.add_argument("--profile", choices=["multi-interest", "mean"], default="multi-interest")
    r.add_argument("--diversity", type=float, default=0.0, help="MMR diversity weight 0..1 (default 0)")
    r.add_argument("--interest-fields", nargs="*", default=[], metavar="FIELD", help="as serve --interest-fields")
    r.add_argument("--format", choices=["text", "json"], default="text")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("evaluate-sessions", help="replay logged sessions: hit@10, nDCG@10, MRR of each profile method")
    s.add_argument("--events", required=True, help="events file (CSV or JSON Lines, as `events import` reads)")
    s.add_argument("--store", default=DEFAULT_STORE, help=f"the catalogue's store URL (default {DEFAULT_STORE})")
    s.add_argument("-k", type=int, default=10, help="cut-off of hit and nDCG (default 10)")
    s.add_argument("--max-cases", type=int, help="replay at most this many next clicks / purchases")
    s.set_defaults(func=cmd_evaluate_sessions)

    x = sub.add_parser("experiment", help="online A/B experiments (serve --experiment FILE): report")
    xsub = x.add_subparsers(dest="experiment_command", required=True)
    xr = xsub.add_parser("report", help="per variant CTR@10 and purchase rate with CIs, the test, MDE, too early?")
    xr.add_argument("--experiment", required=True, help="the experiment JSON file the server ran")
    xr.add_argument("--store", default=DEFAULT_STORE, help=f"the catalogue's store URL (default {DEFAULT_STORE})")
    xr.add_argument("--alpha", type=float, default=0.05)
    xr.add_argument("--format", choices=["text", "json"], default="text")
    xr.set_defaults(func=cmd_experiment_report)
