"""The Celery app. Tasks live in each app's tasks.py; the beat schedule lives in settings."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def serve_worker_metrics(**_: Any) -> None:
    # A worker in a container of its own has a metrics directory that no web process reads: with
    # TOLLGATE_METRICS_BIND set it answers scrapes itself, with the sums of its pool's processes. worker_init is sent
    # once, in the worker's main process, before the pool forks: beat never sends it, and the pool's children
    # inherit the listening socket but not the thread that answers on it.
    from . import metrics

    metrics.start_bind_server()


signals.worker_init.connect(serve_worker_metrics, weak=False, dispatch_uid="tollgate-worker-metrics")
