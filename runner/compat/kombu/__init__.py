"""A stand-in for the parts of ``kombu`` that Celery projects import for their configuration:
``Queue``, ``Exchange`` and ``binding`` in ``task_queues`` and ``task_routes``.

runner has no broker and no exchanges: a queue is a name in the ``queue`` column, so only the
names matter. ``from kombu import Queue, Exchange`` becomes
``from runner.compat.kombu import Queue, Exchange``; a ``Queue`` given in ``task_queues`` is
served by ``runner serve`` (as a Celery worker consumes every queue in ``task_queues``), a
``Queue`` given as a route or as ``apply_async(queue=...)`` names its queue, and a route by
``exchange``/``routing_key`` goes to the queue bound with that routing key. Everything else a
queue or exchange declares (durability, ``queue_arguments``, ``x-max-priority``, message TTLs) is
accepted and ignored.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Exchange", "Queue", "binding"]


class Exchange:
    """``Exchange(name, type="direct", ...)``: kept for its name."""

    def __init__(self, name: str = "", type: str = "direct", channel: Any = None, **kwargs: Any) -> None:
        self.name = name or ""
        self.type = type
        self.options = kwargs

    def __repr__(self) -> str:
        return f"<Exchange {self.name}({self.type})>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Exchange) and (other.name, other.type) == (self.name, self.type)

    def __hash__(self) -> int:
        return hash((self.name, self.type))


class binding:
    """``binding(exchange, routing_key)`` in ``Queue(bindings=[...])``."""

    def __init__(
        self, exchange: Exchange | str | None = None, routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.arguments = arguments


class Queue:
    """``Queue(name, exchange=None, routing_key="", ...)``: a runner queue of the same name."""

    def __init__(
        self,
        name: str = "",
        exchange: Exchange | str | None = None,
        routing_key: str = "",
        channel: Any = None,
        bindings: Any = None,
        on_declared: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Queue({name!r}): runner needs a queue name (a non-empty str)")
        self.name = name
        self.exchange = Exchange(exchange) if isinstance(exchange, str) else exchange
        self.routing_key = routing_key or ""
        self.bindings = list(bindings or [])
        self.queue_arguments = kwargs.get("queue_arguments")
        self.options = kwargs

    def routing_keys(self) -> list[str]:
        """The routing keys this queue is bound with (its own, then its bindings')."""
        keys = [self.routing_key] if self.routing_key else []
        return keys + [b.routing_key for b in self.bindings if getattr(b, "routing_key", "")]

    def exchange_names(self) -> list[str]:
        names = [self.exchange.name] if self.exchange is not None else []
        return names + [(b.exchange if isinstance(b.exchange, str) else getattr(b.exchange, "name", "")) for b in self.bindings]

    def __repr__(self) -> str:
        return f"<Queue {self.name} -> {self.exchange!r} -> {self.routing_key}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)
