"""Bad input and the security rules, through the API and as raw rows straight into the table.

Each bad job must end ``failed`` with a message that names the problem and what is accepted, the
worker must keep going, and nothing but a registered job may ever run: no unpickling, no dotted
import paths, no SQL built from data.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import pytest

from runner.testing import run_burst
from tests.apps import basic
from tests.apps.basic import app

from ..conftest import sql

pytestmark = pytest.mark.anyio

RUNNER = Path(__file__).resolve().parents[2] / "runner"
# The classic protocol-0 pickle that calls os.system when unpickled.
PICKLE_TEXT = "cos\nsystem\n(S'echo pwned'\ntR."


async def drain(url: str) -> Any:
    return await run_burst(app, url)


def error_of(url: str, job_id: int) -> dict[str, Any]:
    ((text,),) = sql(url, f"SELECT error FROM runner_jobs WHERE id = {job_id}")
    return json.loads(text)


async def test_bad_input_fails_visibly_and_the_worker_goes_on(configured: str) -> None:
    good_before = await basic.add.defer_async(1, 1)
    # Rows no producer API would write: straight INSERTs, as another language might.
    sql_inserts = [
        "INSERT INTO runner_jobs (name, args) VALUES ('no.such.job', '[]')",
        "INSERT INTO runner_jobs (name, args) VALUES ('tests.apps.basic.add', '[1]')",
        "INSERT INTO runner_jobs (name, args) VALUES ('tests.apps.basic.add', '[\"a\", 2]')",
        "INSERT INTO runner_jobs (name, args) VALUES ('tests.apps.basic.add', '[1, 2')",
        "INSERT INTO runner_jobs (name, args) VALUES ('tests.apps.basic.add', '{\"x\": 1}')",
        "INSERT INTO runner_jobs (name, args) VALUES ('os.system', '[\"echo pwned\"]')",
        "INSERT INTO runner_jobs (name, args) VALUES ('subprocess.call', '[[\"touch\", \"/tmp/runner-pwned\"]]')",
        # A pickle of os.system('echo pwned') stored where JSON belongs: never unpickled, only refused.
        "INSERT INTO runner_jobs (name, args) VALUES ('tests.apps.basic.add', '" + PICKLE_TEXT.replace("'", "''") + "')",
        f"INSERT INTO runner_jobs (name, args) VALUES ('tests.apps.basic.add', '[\"{'x' * 1_100_000}\", 1]')",
    ]
    for statement in sql_inserts:
        sql(configured, statement + (" RETURNING id" if "postgres" in configured else ""))
    unencodable = await basic.unencodable.defer_async()
    bad_str = await basic.raises_bad_str.defer_async()
    too_big = await basic.big_result.defer_async(2_000_000)
    good_after = await basic.add.defer_async(2, 2)
    await drain(configured)
    assert await good_before.wait_async(5) == 2 and await good_after.wait_async(5) == 4
    errors = {
        name: json.loads(error)
        for name, error in sql(configured, "SELECT args || ' ' || name, error FROM runner_jobs WHERE state = 'failed'")
    }
    messages = {k: f"{v['type']}: {v['message']}" for k, v in errors.items()}
    assert "UnknownJob: unknown job 'no.such.job'; registered jobs:" in messages["[] no.such.job"]
    assert "UnknownJob" in messages['["echo pwned"] os.system']
    assert "UnknownJob" in messages['[["touch", "/tmp/runner-pwned"]] subprocess.call']
    assert not os.path.exists("/tmp/runner-pwned")
    assert "SerializationError: args column is not valid JSON" in messages[f"{PICKLE_TEXT} tests.apps.basic.add"]
    oversized = next(v for k, v in messages.items() if k.startswith('["xxxx'))
    assert "PayloadTooLarge: arguments are 1,100,0" in oversized and "the limit is 1,048,576" in oversized
    assert "missing a required argument: 'y'" in messages["[1] tests.apps.basic.add"]
    assert "Expected `int`, got `str`" in messages['["a", 2] tests.apps.basic.add']
    assert "SerializationError: args column is not valid JSON" in messages["[1, 2 tests.apps.basic.add"]
    assert "args column must be a JSON array" in messages['{"x": 1} tests.apps.basic.add']
    assert error_of(configured, unencodable.id)["type"] == "SerializationError"
    assert "unprintable BadStr" in error_of(configured, bad_str.id)["message"]
    assert "limit is 1,048,576" in error_of(configured, too_big.id)["message"]


async def test_names_and_queues_with_quotes_and_semicolons_are_data(configured: str) -> None:
    hostile = "x'); DROP TABLE runner_jobs; --"
    handle = await basic.add.options(queue=hostile).defer_async(1, 2)
    sql(configured, "INSERT INTO runner_jobs (name, args) VALUES ('a''; DELETE FROM runner_jobs; --', '[]')")
    await run_burst(app, configured, queues=(hostile, "default"))
    assert await handle.wait_async(5) == 3
    ((state, error),) = sql(configured, "SELECT state, error FROM runner_jobs WHERE name LIKE 'a''%'")
    assert state == "failed" and 'unknown job "a\'; DELETE FROM runner_jobs; --"' in json.loads(error)["message"]
    assert sql(configured, "SELECT count(*) FROM runner_jobs")[0][0] == 2


def _calls_in(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                names.add(f"{func.value.id}.{func.attr}")
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def test_no_code_path_unpickles_evaluates_or_imports_by_data() -> None:
    """Static check over runner/: the decoders are msgspec JSON only; jobs resolve by registry."""
    forbidden = {"pickle.loads", "pickle.load", "marshal.loads", "eval", "exec", "shelve.open", "dill.loads"}
    for path in RUNNER.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imports & {"pickle", "marshal", "shelve", "dill", "cloudpickle"}, f"{path} imports a pickler"
        assert not _calls_in(tree) & forbidden, f"{path} calls {_calls_in(tree) & forbidden}"
    executor = (RUNNER / "run_job.py").read_text()
    assert "import_module" not in executor and "__import__" not in executor, "jobs must resolve via the registry"


def test_every_sql_statement_binds_its_values() -> None:
    """SQL f-strings anywhere in runner/ may only splice module or class constants (column
    lists, fragments: UPPER_CASE names, or ``self.UPPER_CASE``), never a value: values always
    travel as bound parameters."""
    checked = 0
    for path in RUNNER.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if any(k in text.upper() for k in ("SELECT ", "INSERT ", "UPDATE ", "DELETE ")):
                    checked += 1
                    for value in node.values:
                        if isinstance(value, ast.FormattedValue):
                            root = value.value
                            while isinstance(root, (ast.Call, ast.Attribute)):
                                root = root.func if isinstance(root, ast.Call) else root.value
                            node_value = value.value
                            if (
                                isinstance(node_value, ast.Attribute)
                                and isinstance(node_value.value, ast.Name)
                                and node_value.value.id == "self"
                            ):
                                assert node_value.attr.lstrip("_").isupper(), (
                                    f"{path.relative_to(RUNNER)} line {node.lineno}: splices self.{node_value.attr}"
                                )
                                continue
                            assert isinstance(root, ast.Name) and root.id.lstrip("_").isupper(), (
                                f"{path.relative_to(RUNNER)} line {node.lineno}: SQL f-string splices {ast.unparse(value.value)}"
                            )
    assert checked >= 10, "the check found no SQL f-strings: has the store moved?"


async def test_bad_calls_through_the_api_are_refused_before_any_row_is_written(configured: str) -> None:
    """Enqueue-side checks: the caller gets the documented error naming the problem; no row."""
    from runner.errors import ArgumentsError, PayloadTooLarge, SerializationError

    refused = [
        (ArgumentsError, "missing a required argument: 'y'", basic.add.call(1)),
        (ArgumentsError, "too many positional arguments", basic.add.call(1, 2, 3)),
        (ArgumentsError, "Expected `int`, got `str`", basic.add.call("a", 2)),
        (ArgumentsError, "unexpected keyword argument 'z'", basic.add.call(1, 2, z=3)),
        (PayloadTooLarge, "the limit is 1,048,576", basic.record.call("x" * 1_100_000)),
        (SerializationError, "job meta cannot be encoded as JSON", basic.add.options(meta={"x": object()}).call(1, 2)),
    ]
    for error, message, call in refused:
        with pytest.raises(error, match=message.replace("(", r"\(").replace("`", ".")):
            await app.defer_many_async([call])
        # One bad call in a batch refuses the whole batch: nothing half-enqueued.
        with pytest.raises(error):
            await app.defer_many_async([basic.add.call(5, 5), call])
    with pytest.raises(ArgumentsError, match="unknown option"):
        basic.add.options(retries=3)
    assert sql(configured, "SELECT count(*) FROM runner_jobs") == [(0,)]
    good = await basic.add.defer_async(20, 22)
    await drain(configured)
    assert await good.wait_async(5) == 42


async def test_malformed_chained_jobs_fail_their_row_and_the_worker_goes_on(configured: str) -> None:
    """The ``callbacks`` column of a raw row may hold anything: it is decoded with the rest of
    the row, and a malformed spec fails that row alone, naming the column and the field (a
    child that could not be inserted used to make the outcome unwritable, and one that could not
    even be built crashed the worker)."""
    hostile = [
        ({"on_failure": [{"name": "tests.apps.basic.add", "key": 5}]}, "$.on_failure[0].key"),
        ({"on_failure": [{"name": "tests.apps.basic.add", "queue": ["q"]}]}, "$.on_failure[0].queue"),
        ({"on_failure": [{"name": "tests.apps.basic.add", "priority": 10**12}]}, "$.on_failure[0].priority"),
        ({"on_failure": [{"name": "tests.apps.basic.add", "max_attempts": "x"}]}, "$.on_failure[0].max_attempts"),
        ({"on_failure": [{"name": "x", "kwargs": [1]}]}, "$.on_failure[0].kwargs"),
        ({"on_failure": [{"name": "a\u0000b"}]}, "NUL"),
        ({"on_failure": {"name": "tests.apps.basic.add"}}, "$.on_failure"),
        ({"on_failure": ["tests.apps.basic.add"]}, "$.on_failure[0]"),
        ({"on_failur": []}, "unknown field `on_failur`"),
        # What runs after success is a waiting row now, not a spec in this column.
        ({"on_success": [{"name": "tests.apps.basic.add"}]}, "unknown field `on_success`"),
    ]
    good = await basic.add.defer_async(3, 4)  # (creates the schema, too)
    ids = []
    for callbacks, _ in hostile:
        text = json.dumps(callbacks).replace("'", "''")
        ids.append(
            sql(
                configured,
                f"INSERT INTO runner_jobs (name, args, callbacks) VALUES ('tests.apps.basic.add', '[1, 2]', '{text}') RETURNING id",
            )[0][0]
        )
    worker = await drain(configured)
    assert await good.wait_async(5) == 7
    assert worker.completer.pending == 0
    errors = [
        json.loads(e)
        for (e,) in sql(configured, f"SELECT error FROM runner_jobs WHERE id IN ({','.join(map(str, ids))}) ORDER BY id")
    ]
    assert len(errors) == len(hostile)
    for (callbacks, where), error in zip(hostile, errors):
        assert error["type"] == "SerializationError", (callbacks, error)
        assert error["message"].startswith("callbacks column") and where in error["message"], (callbacks, error)
    assert states_of(configured) == {"succeeded": 1, "failed": len(hostile)}
    assert sql(configured, "SELECT count(*) FROM runner_jobs WHERE parent_id IS NOT NULL") == [(0,)], "no child was enqueued"


async def test_a_malformed_chained_job_is_refused_at_enqueue(configured: str) -> None:
    from runner import ArgumentsError, ChildSpec

    with pytest.raises(ArgumentsError, match=r"option on_failure=.*Expected `array`, got `str` - at `\$\[0\]\.args`"):
        await basic.boom.options(on_failure=ChildSpec(name="tests.apps.basic.noop", args="oops")).defer_async("kaput")  # type: ignore[arg-type]
    with pytest.raises(ArgumentsError, match=r"accepted: a job\.call"):
        await basic.boom.options(on_failure="tests.apps.basic.noop").defer_async("kaput")
    good = await basic.add.defer_async(1, 2)
    assert sql(configured, "SELECT id FROM runner_jobs") == [(good.id,)], "nothing of the refused calls was written"


def states_of(url: str) -> dict[str, int]:
    return dict(sql(url, "SELECT state, count(*) FROM runner_jobs GROUP BY state"))


async def test_an_outcome_whose_children_cannot_be_inserted_is_failed_not_retried_forever(driver: Any) -> None:
    """Defence in depth behind ``decide``'s checks: the completer never keeps retrying a batch
    that fails because of its data (it would hold every other outcome back for good)."""
    import time

    import anyio
    import msgspec

    from runner.complete import Batched
    from runner.decide import Returned, decide
    from runner.policy import Policy
    from runner.wire import Envelope

    await driver.enqueue([Envelope(name="a"), Envelope(name="b")])
    first, second = await driver.claim("owner:1:0", ["default"], 2, 30)
    completer = Batched(driver)
    poisoned = Envelope(name="child", args=[object()])  # cannot be encoded: the insert fails
    one = msgspec.structs.replace(decide(first, Policy(), Returned(1), now=time.time()), children=(poisoned,))
    await completer.complete(one)
    await completer.complete(decide(second, Policy(), Returned(2), now=time.time()))
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.run)
        with anyio.fail_after(10):
            while completer.pending:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    a, b = await driver.get(first.id), await driver.get(second.id)
    assert (a.state, b.state, b.result) == ("failed", "succeeded", "2")
    assert (
        json.loads(a.error)["type"] == "ChainError"
        and "could not be written with its chained jobs" in json.loads(a.error)["message"]
    )
    assert (await driver.get(first.id + 2)) is None  # no child row
