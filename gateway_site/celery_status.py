"""What the Celery side looks like from the web process: queue depths, workers that answer, beat's last sign of life.

Every function here is sync and may wait on the broker or the database: call it from a thread, never the event loop.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone

from gateway_site.celery import app

# A broker that does not answer must fail a probe within seconds, not after kombu's default retries.
BROKER_TIMEOUT_SECONDS = 2.0


def _connection(timeout: float) -> Any:
    # Redis reads socket_* transport options; AMQP uses connect_timeout; the filesystem transport needs neither.
    options: dict[str, Any] = {}
    if app.conf.broker_url and app.conf.broker_url.split(":", 1)[0] in ("redis", "rediss", "unix"):
        options |= {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry_on_timeout": False}
    return app.connection_for_read(connect_timeout=timeout, transport_options=options)


def queue_names() -> list[str]:
    """The queues this app's tasks go to: "celery" (beat's jobs) and the batch tiers' queues, whether or not this
    process has sent anything to them yet (Celery declares a queue on its first use), and any other it sent to."""
    return sorted(set(app.amqp.queues) | set(settings.TOLLGATE_QUEUES.values()))


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Celery queue on the configured broker. Raises when the broker cannot be reached.

    A passive declare works the same on every transport: Redis sums LLEN over the priority lists, RabbitMQ reports
    the queue's message count, the filesystem transport counts its message files. A queue nothing was ever sent to
    (or, on Redis, an empty one: its list does not exist) counts as 0.
    """
    depths: dict[str, int] = {}
    with _connection(BROKER_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=0)
        for name in queue_names():
            channel = conn.channel()  # a fresh channel each time: RabbitMQ closes one after a 404
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except conn.channel_errors as e:
                if "NOT_FOUND" not in str(e):
                    raise
                depths[name] = 0
            finally:
                try:
                    channel.close()
                except conn.channel_errors + conn.connection_errors:
                    pass
    return depths


def workers_seen(timeout: float = 1.0) -> list[str]:
    """The host names of the workers that answered a ping within ``timeout`` seconds. Raises when the broker is down."""
    with _connection(min(timeout, BROKER_TIMEOUT_SECONDS)) as conn:
        conn.ensure_connection(max_retries=0)
        replies = app.control.ping(timeout=timeout, connection=conn) or []
    return sorted(name for reply in replies for name in reply)


def beat_heartbeat_age() -> float | None:
    """Seconds since beat last sent a scheduled task, or None when it never has (or no schedule is enabled).

    django-celery-beat writes each enabled task's last_run_at when beat sends it; the newest one is the last time
    beat was seen working, whichever process it runs in, with no extra moving part. Tollgate's scheduler saves each
    send at once (gateway_site/beat.py); a threshold should allow the shortest schedule's interval and some slack
    (the default schedules run every minute, so 600 s is safe).
    """
    from django.db.models import Max
    from django_celery_beat.models import PeriodicTask

    newest = PeriodicTask.objects.filter(enabled=True).aggregate(newest=Max("last_run_at"))["newest"]
    if newest is None:
        return None
    return max(0.0, (timezone.now() - newest).total_seconds())
