"""Benchmarks: runner against Celery (Redis broker), pgqueuer and a bare asyncio script, on the
same machine in the same run. ``python -m bench --help``."""
