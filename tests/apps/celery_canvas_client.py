"""The producer side of ``celery_canvas_proj``, written for Celery (imports naming
``runner.compat``): sends every canvas shape and helper that project uses, waits for the results
and writes what it saw -- results, ids, tracking rows, events -- as JSON to ``sys.argv[1]``.

Run as a script next to a worker of the project (``runner serve`` or, with the imports changed
back, ``celery worker``); ``tests/compat/test_celery_parity.py`` compares the two files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from typing import Any

import celery_canvas_proj as proj  # type: ignore[import-not-found]  # the ported copy, on sys.path

from runner.compat.celery import chain, chord, group, signature
from runner.compat.celery.result import AsyncResult, GroupResult
from runner.compat.celery.utils import uuid

TIMEOUT = 60
out: dict[str, Any] = {}


def outcome(result: Any) -> Any:
    try:
        return ["ok", result.get(timeout=TIMEOUT)]
    except Exception as exc:
        return ["error", type(exc).__name__, str(exc)]


def main(path: str) -> None:
    add, tsum, ident, boom = proj.add, proj.tsum, proj.ident, proj.boom
    out["old_setting_name"] = proj.app.conf.CELERY_ALWAYS_EAGER
    out["old_setting_default_queue"] = proj.app.conf.CELERY_DEFAULT_QUEUE
    out["backoff_table"] = proj.BACKOFF_TABLE
    out["uuid_shape"] = [len(uuid()), uuid().count("-"), uuid() != uuid()]
    out["task_name_attr"] = [add.__name__, proj.ingest.__name__]

    # 1. ids chosen up front, keyed into the project's own tracking rows
    doc_id = "doc-7"
    sig = signature("celery_canvas_proj.ingest", args=(doc_id,), task_id=f"{doc_id}-ingest")
    out["signature_id"] = sig.id
    single = sig.apply_async()
    out["single_id"] = [single.id, single.task_id, AsyncResult(single.id).id]
    pipeline = chain(
        proj.ingest.s("doc-8").set(task_id="doc-8-ingest"),
        proj.ocr.s().set(task_id="doc-8-ocr"),
        proj.index.s(),
        task_id="doc-8-index",
    ).apply_async()
    out["chain_ids"] = [pipeline.id, pipeline.parent.id, pipeline.parent.parent.id]
    fan = group((add.s(i, i).set(task_id=f"fan-{i}") for i in range(3)), task_id="fan-group").apply_async()
    out["group_ids"] = [fan.id, [r.id for r in fan.results]]
    frozen_sig = add.s(20, 22)
    frozen = frozen_sig.freeze()
    frozen_sig.delay()
    joined = chord([add.s(1, 1).set(task_id="join-a"), add.s(2, 2).set(task_id="join-b")], tsum.s(), task_id="join-body")()
    out["chord_ids"] = [joined.id, joined.parent.id, [r.id for r in joined.parent.results]]

    # 2. canvas shapes
    shapes = {
        "chain_group_group": chain(group(add.s(1, 1), add.s(2, 2)), group(tsum.s(), tsum.s())).apply_async(),
        "group_or_group": (group(add.s(1, 1), add.s(2, 2)) | group(tsum.s(), tsum.s())).apply_async(),
        "chain_group_group_task": chain(group(add.s(1, 1), add.s(2, 2)), group(tsum.s(), tsum.s()), tsum.s()).apply_async(),
        "chain_chord_task": chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(100)).apply_async(),
        "chord_group_body": chord([add.s(1, 1), add.s(2, 2)], group(tsum.s(), ident.s())).apply_async(),
        "nested_group_in_header": chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], tsum.s()).apply_async(),
        "nested_group": group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)).apply_async(),
        "chunks": add.chunks(zip(range(7), range(7)), 3).apply_async(),
        "map": ident.map([1, 2, 3]).apply_async(),
        "starmap": add.starmap([(1, 2), (3, 4)]).apply_async(),
        "link": add.apply_async((1, 1), link=add.s(10)),
        "webhook": proj.deliver_webhook.delay("order.created"),
        "flaky_backoff": proj.flaky.delay(),
    }
    failures = {
        "chain_failure": chain(add.s(1, 1), boom.s(), add.s(1)).apply_async(link_error=proj.on_error.s()),
        "chord_failure": chord(
            [add.s(1, 1), boom.s(2).set(task_id="bad-header")], tsum.s().on_error(proj.on_error.s())
        ).apply_async(),
        "group_failure": group(add.s(1, 1), boom.s(3)).apply_async(),
        "errback": boom.apply_async((7,), link_error=proj.on_error.s(), task_id="boom-7"),
    }
    saved = group(add.s(i, 10) for i in range(3)).apply_async()
    saved.save()
    by_hand = GroupResult(uuid(), [add.delay(5, 5), add.delay(6, 6)])
    by_hand.save()

    out["single"] = outcome(single)
    out["pipeline"] = outcome(pipeline)
    out["fan"] = outcome(fan)
    out["frozen"] = [outcome(AsyncResult(frozen.id)), frozen.id == frozen_sig.id]
    out["joined"] = outcome(joined)
    for name, result in {**shapes, **failures}.items():
        out[name] = [type(result).__name__, outcome(result)]
    out["chain_failure_states"] = [failures["chain_failure"].state, failures["chain_failure"].parent.state]
    chord_body = failures["chord_failure"]
    out["chord_failure_body"] = [chord_body.state, type(chord_body.result).__name__, str(chord_body.result)]
    out["group_failure_no_propagate"] = [repr(v) for v in failures["group_failure"].get(timeout=TIMEOUT, propagate=False)]
    restored = GroupResult.restore(saved.id)
    out["restored"] = [
        restored.id == saved.id,
        [r.id for r in restored.results] == [r.id for r in saved.results],
        restored.get(timeout=TIMEOUT),
    ]
    restored_by_hand = GroupResult.restore(by_hand.id)
    out["restored_by_hand"] = [
        [r.id for r in restored_by_hand.results] == [r.id for r in by_hand.results],
        restored_by_hand.get(timeout=TIMEOUT),
    ]
    out["restore_unknown"] = GroupResult.restore(uuid()) is None

    time.sleep(3)  # errbacks, link callbacks and heartbeats land
    with sqlite3.connect(os.environ["CANVAS_PROJ_DB"]) as conn:
        conn.row_factory = sqlite3.Row
        out["records"] = {row["id"]: dict(row) for row in conn.execute("SELECT * FROM task_records")}
        out["events"] = [
            [row["kind"], json.loads(row["data"])] for row in conn.execute("SELECT kind, data FROM events ORDER BY rowid")
        ]
    out["known_ids"] = {
        "link_parent": shapes["link"].id,
        "chain_failure": [failures["chain_failure"].id, failures["chain_failure"].parent.id],
        "chord_failure_body": chord_body.id,
        "frozen": frozen.id,
        "single": single.id,
    }
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True, default=repr)


if __name__ == "__main__":
    main(sys.argv[1])
