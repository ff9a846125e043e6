"""The audit log in the admin (read-only, filterable, exportable), its retention, and its absence from /v1."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from audit import context, services, tasks
from audit.middleware import AuditMiddleware

from ..conftest import Party
from ..factories import make_key
from ..site.test_settings import start_with

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/auditlog/logentry/"


def test_admin_lists_and_filters_but_cannot_add_change_or_delete(admin_client: Client, alice: Party,
                                                                  bob: Party) -> None:
    entry = LogEntry.objects.get_for_object(alice.key).first()
    assert admin_client.get(CHANGELIST).status_code == 200
    assert admin_client.get(f"{CHANGELIST}{entry.pk}/change/").status_code == 200  # view only
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.post(f"{CHANGELIST}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"})
    assert LogEntry.objects.filter(pk=entry.pk).exists() and bulk.status_code in (200, 302)
    changed = admin_client.post(f"{CHANGELIST}{entry.pk}/change/", {"object_repr": "forged"})
    assert changed.status_code == 403 and LogEntry.objects.get(pk=entry.pk).object_repr != "forged"
    filtered = admin_client.get(CHANGELIST, {"tenant": str(alice.tenant.pk), "source": "command", "action": "0"})
    rows = list(filtered.context["cl"].result_list)
    assert rows and all(row.additional_data["tenant"] == alice.tenant.pk for row in rows)
    assert admin_client.get(CHANGELIST, {"tenant": "nope"}).context["cl"].result_count == 0
    assert admin_client.get(CHANGELIST, {"tenant": str(2**64)}).context["cl"].result_count == 0
    assert admin_client.get(CHANGELIST, {"source": "api"}).context["cl"].result_count == 0
    searched = admin_client.get(CHANGELIST, {"q": "bob's key"})
    assert {row.additional_data.get("tenant") for row in searched.context["cl"].result_list} == {bob.tenant.pk}


def test_admin_exports_selected_entries(admin_client: Client, alice: Party) -> None:
    ids = list(LogEntry.objects.values_list("pk", flat=True))
    as_csv = admin_client.post(CHANGELIST, {"action": "export_csv", "_selected_action": ids})
    assert as_csv.status_code == 200 and as_csv["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(as_csv.streaming_content).decode())))
    assert len(rows) == len(ids) and {"time", "action", "model", "actor", "source", "remote_addr"} <= set(rows[0])
    as_json = admin_client.post(CHANGELIST, {"action": "export_json", "_selected_action": ids[:2]})
    data = json.loads(b"".join(as_json.streaming_content))
    expected = LogEntry.objects.filter(pk__in=ids[:2]).order_by("-pk").values_list("object_pk", flat=True)
    assert [item["object_id"] for item in data] == list(expected)


def test_non_staff_cannot_read_the_log(alice: Party) -> None:
    client = Client()
    client.force_login(alice.user)
    assert client.get(CHANGELIST).status_code == 302  # to the admin sign-in


@override_settings(TOLLGATE_AUDIT_RETENTION_DAYS=30)
def test_retention_prunes_only_old_entries(alice: Party) -> None:
    now = timezone.now()
    old = LogEntry.objects.get_for_object(alice.key).first()
    LogEntry.objects.filter(pk=old.pk).update(timestamp=now - timedelta(days=31))
    edge = LogEntry.objects.get_for_object(alice.tenant).first()
    LogEntry.objects.filter(pk=edge.pk).update(timestamp=now - timedelta(days=29))
    before = LogEntry.objects.count()
    assert tasks.prune_entries.delay().get() == 1
    assert LogEntry.objects.count() == before - 1 and not LogEntry.objects.filter(pk=old.pk).exists()
    assert LogEntry.objects.filter(pk=edge.pk).exists()


@override_settings(TOLLGATE_AUDIT_RETENTION_DAYS=0)
def test_retention_zero_keeps_everything(alice: Party) -> None:
    LogEntry.objects.update(timestamp=timezone.now() - timedelta(days=4000))
    assert services.prune_entries() == 0 and LogEntry.objects.exists()


def test_retention_is_scheduled_by_beat() -> None:
    from django_celery_beat.schedulers import DatabaseScheduler

    from gateway_site.celery import app

    def install() -> None:  # what DatabaseScheduler.setup_schedule does with the settings' schedule at beat start
        for name, fields in app.conf.beat_schedule.items():
            DatabaseScheduler.Entry.from_entry(name, app=app, **fields)

    install()
    task = PeriodicTask.objects.get(name="Prune the audit log past its retention")
    assert task.task == "audit.tasks.prune_entries" and task.crontab is not None and task.enabled
    task.enabled = False
    task.save()
    install()
    assert not PeriodicTask.objects.get(pk=task.pk).enabled  # an operator's "off" survives beat restarts


@pytest.mark.parametrize("value", ["a year", "-1"])
def test_bad_retention_stops_startup(value: str) -> None:
    result = start_with({"DJANGO_DEBUG": "1", "TOLLGATE_AUDIT_RETENTION_DAYS": value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "TOLLGATE_AUDIT_RETENTION_DAYS" in result.stderr


def test_v1_requests_pass_through_without_an_origin() -> None:
    seen: list[context.Origin] = []
    middleware = AuditMiddleware(lambda request: seen.append(context.current()) or None)  # type: ignore[arg-type,func-returns-value]
    factory = RequestFactory()
    middleware(factory.post("/v1/chat/completions"))
    middleware(factory.get("/keys/"))
    middleware(factory.get("/api/keys/"))
    middleware(factory.get("/admin/"))
    assert [o.source for o in seen] == ["command", "page", "api", "admin"] and seen[0].request is None


def test_entries_written_outside_a_request_are_commands(alice: Party) -> None:
    key, _ = make_key(alice.tenant)
    entry = LogEntry.objects.get_for_object(key).first()
    assert entry.additional_data == {"tenant": alice.tenant.pk, "source": "command"} and entry.actor is None
    with context.origin(context.Origin(context.API)):
        key.name = "renamed"
        key.save()
    assert LogEntry.objects.get_for_object(key).first().additional_data["source"] == "api"
    assert User.objects.count() == 1  # alice only: no user is ever made up for an entry
