"""The fault suite: real processes, real signals, a real PostgreSQL restart, hostile rows.

Sizes are CI sizes: the whole directory runs in about three minutes on both backends. Set
``FAULTS_SCALE`` (a factor, default 1) to run every scenario bigger; ``python -m tests.faults.soak``
is the long run for people.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("FAULTS_SCALE", "1"))


def scaled(n: int) -> int:
    """``n`` at CI size, times ``FAULTS_SCALE``."""
    return max(1, round(n * SCALE))
