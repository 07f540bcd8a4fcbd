"""What PostgreSQL says about the queue table and the database: sizes, dead tuples, vacuum runs,
transactions and WAL -- read before and after a growth step to show what it cost."""

from __future__ import annotations

from typing import Any

import asyncpg

from .settings import PG_ADMIN

_TABLE = """
    SELECT pg_total_relation_size('runner_jobs') AS total_bytes, pg_relation_size('runner_jobs') AS heap_bytes,
           pg_indexes_size('runner_jobs') AS index_bytes, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd,
           autovacuum_count, vacuum_count, autoanalyze_count, last_autovacuum, last_vacuum
    FROM pg_stat_user_tables WHERE relname = 'runner_jobs'
"""
_INDEXES = """
    SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = 'runner_jobs'::regclass ORDER BY c.relname
"""
_DATABASE = """
    SELECT xact_commit + xact_rollback, tup_updated, tup_inserted, blks_hit, blks_read, pg_current_wal_lsn()
    FROM pg_stat_database WHERE datname = $1
"""


async def table_stats(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = dict(await conn.fetchrow(_TABLE))
        row["indexes"] = dict(await conn.fetch(_INDEXES))
        return row
    finally:
        await conn.close()


async def database_counters(url: str) -> tuple[int, int, int, int, int, int]:
    """(transactions, tuples updated, tuples inserted, buffer hits, buffer reads, WAL position).
    The WAL position is the server's: other databases' writes count too (an upper bound). Read
    from the admin database, so that reading opens no session in the measured one."""
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(_DATABASE, url.rsplit("/", 1)[1].split("?")[0])
        return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5])  # asyncpg: pg_lsn as int
    finally:
        await conn.close()


async def server_setting(url: str, name: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT current_setting($1)", name))
    finally:
        await conn.close()


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"
