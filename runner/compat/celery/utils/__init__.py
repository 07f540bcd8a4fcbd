"""Celery's ``celery.utils`` namespace (only what task modules import)."""
