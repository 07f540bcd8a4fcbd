"""A Celery app still pointing at Redis: `runner serve` must refuse it with a clear message."""

from runner.compat.celery import Celery

app = Celery("celery_redis_proj", broker="redis://localhost:6379/0")


@app.task
def add(x, y):  # type: ignore[no-untyped-def]
    return x + y
