"""Find the App named by ``-A MODULE[:ATTR]`` (Celery's habit), with errors that say what to fix."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .app import App
from .errors import ConfigError

__all__ = ["DEFAULT_APP", "load_app"]

# The example app of the source tree; not installed by the wheel, so it never shadows a user's own
# top-level `jobs` package. Found from a clone because the current directory is on the path.
DEFAULT_APP = "jobs"


def load_app(spec: str) -> App:
    """Import ``MODULE[:ATTR]`` and return its App. Without ATTR: ``app``, then any single App
    (or object exposing ``runner_app``, as the Celery shim's ``Celery`` does) in the module."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError(f"--app {spec!r}: expected MODULE or MODULE:ATTR, e.g. jobs or proj.celery:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `celery -A`: the project in the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            if spec == DEFAULT_APP:
                raise ConfigError(
                    f"no app to serve: none was named (-A MODULE[:ATTR] or RUNNER_APP), and the default, {DEFAULT_APP!r} "
                    f"(runner's example app, in its source tree), is not in {os.getcwd()}; "
                    "name yours, e.g. runner serve -A myproject.tasks"
                ) from None
            raise ConfigError(
                f"--app {spec!r}: no module named {exc.name!r} (is it on PYTHONPATH / in the current directory?)"
            ) from None
        raise ConfigError(f"--app {spec!r}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"--app {spec!r}: importing {module_name} raised {type(exc).__name__}: {exc}") from exc
    if attr:
        try:
            candidate: Any = module
            for part in attr.split("."):
                candidate = getattr(candidate, part)
        except AttributeError:
            raise ConfigError(f"--app {spec!r}: module {module_name} has no attribute {attr!r}") from None
        app = _as_app(candidate)
        if app is None:
            raise ConfigError(f"--app {spec!r}: {attr} is a {type(candidate).__name__}, not a runner App")
        return app
    for name in ("app", "celery", "runner_app"):
        app = _as_app(getattr(module, name, None))
        if app is not None:
            return app
    found = [a for a in (_as_app(v) for v in vars(module).values()) if a is not None]
    if len(set(map(id, found))) == 1:
        return found[0]
    what = "several Apps" if found else "no App"
    raise ConfigError(f"--app {spec!r}: module {module_name} defines {what}; name one with MODULE:ATTR")


def _as_app(value: Any) -> App | None:
    if isinstance(value, App):
        return value
    inner = getattr(value, "runner_app", None)
    return inner if isinstance(inner, App) else None
