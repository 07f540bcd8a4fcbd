"""The example app, and the default of ``runner serve``: users with profiles, and jobs on them.

``python -m jobs.demo`` seeds users and enqueues work; ``runner serve`` then processes it.
"""

from .app import app
from . import users as users  # noqa: F401  (registers the jobs)

__all__ = ["app"]
