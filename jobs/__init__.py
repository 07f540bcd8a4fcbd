"""The example app, and the default of ``runner serve``: users with profiles, and jobs on them.

``python -m jobs.demo`` seeds users and enqueues work; ``runner serve`` then processes it.
"""

from . import users as users
from .app import app

__all__ = ["app"]
