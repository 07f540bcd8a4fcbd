"""Compatibility layers that let code written for other task queues run on runner.

``runner.compat.celery``: Celery 5.x task modules run unchanged after replacing the import prefix
``celery`` with ``runner.compat.celery``; serve them with ``runner serve -A proj``.
"""
