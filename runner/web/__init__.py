"""The web dashboard and Prometheus ``/metrics``, as one ASGI app you can serve or mount.

::

    from runner.web import dashboard

    runner_ui = dashboard(broker="postgresql://app@db/app", app=my_runner_app)
    fastapi_app.mount("/runner", runner_ui)  # behind your own auth

``runner dashboard`` serves the same app with uvicorn (loopback by default, ``--read-only``,
``--basic-auth``). Every figure comes from the queue database through the driver, so any host
shows the same numbers and nothing is lost with a worker.

Modules: ``app`` (the ASGI app and its routes), ``pages`` (what each page reads), ``forms``
(query and form input, checked), ``security`` (basic auth, same-origin and read-only checks),
``metrics`` (the Prometheus exposition), ``summary`` (quantiles and rates from the counters),
``charts`` (inline SVG), ``fmt`` (template filters), ``serve`` (uvicorn, the exporter process).
"""

from __future__ import annotations

from .app import Dashboard, dashboard, metrics_app

__all__ = ["Dashboard", "dashboard", "metrics_app"]
