"""Where the benchmark puts things, from ``BENCH_*`` environment variables (children inherit them).

Two benchmarks on one machine must not share databases or Redis keys: give the second one its own
``BENCH_DB_PREFIX`` (it must start with ``bench``: only such databases are ever dropped) and
``BENCH_REDIS_URL`` database."""

from __future__ import annotations

import os
from pathlib import Path

PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "bench_")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
WORK = Path(os.environ.get("BENCH_WORKDIR", "/tmp/runner-bench"))  # SQLite files, child logs
