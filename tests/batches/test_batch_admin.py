"""The ops console for batches: read-only pages that render, file downloads, the queues page, the cancel action,
and the batch settings of tenants, routes and prices (operators set them; tenant owners cannot)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts import services
from accounts.models import Tenant
from batches.models import Batch, BatchPart
from billing.models import Price
from proxy.admin import ModelRouteForm
from proxy.models import ModelRoute

from ..conftest import Party
from .batch_rows import make_batch, make_file

pytestmark = pytest.mark.django_db


def token_client(user: User) -> Client:
    _, token = services.issue_management_token(user=user, name="test")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def finished(alice: Party) -> Batch:
    output = make_file(alice, b'{"custom_id": "a"}\n', name="batch_x_output.jsonl")
    errors = make_file(alice, b'{"custom_id": "b"}\n', name="batch_x_error.jsonl")
    return make_batch(alice, status=Batch.Status.COMPLETED, total=2, succeeded=1, failed=1, output_file=output,
                      error_file=errors, model="demo")


def test_the_changelist_and_its_filters_render(admin_client: Client, finished: Batch, bob: Party) -> None:
    make_batch(bob, queue="high", total=5, running=2)
    page = admin_client.get("/admin/batches/batch/")
    html = page.content.decode()
    assert page.status_code == 200 and finished.public_id in html and "50 %" not in html and "100 %" in html
    assert 'href="/admin/batches/batch/queues/"' in html  # the link to the queues page
    high = admin_client.get("/admin/batches/batch/?queue=high").content.decode()
    assert finished.public_id not in high and "bob" in high.lower()
    assert admin_client.get(f"/admin/batches/batch/?status__exact=completed&tenant__id__exact={finished.tenant_id}"
                            ).status_code == 200
    assert admin_client.get("/admin/batches/batch/add/").status_code == 403


def test_the_change_view_is_read_only_and_links_the_files(admin_client: Client, finished: Batch) -> None:
    page = admin_client.get(f"/admin/batches/batch/{finished.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200 and "succeeded: 1, failed: 1" in html and "running: 0" in html
    assert f'href="/admin/batches/file/{finished.output_file_id}/download/"' in html
    assert f'href="/admin/batches/file/{finished.error_file_id}/download/"' in html
    assert 'name="total"' not in html and 'name="completed"' not in html  # nothing to edit
    before = Batch.objects.values("completed", "failed", "total").get(pk=finished.pk)
    admin_client.post(f"/admin/batches/batch/{finished.pk}/change/", {"completed": 99, "total": 99})
    assert Batch.objects.values("completed", "failed", "total").get(pk=finished.pk) == before
    assert admin_client.get(f"/admin/batches/batch/{finished.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/batches/batch/999999/change/").status_code in (302, 404)  # never a 500


def test_operators_download_the_files(admin_client: Client, finished: Batch) -> None:
    got = admin_client.get(f"/admin/batches/file/{finished.output_file_id}/download/")
    assert got.status_code == 200 and b"".join(got.streaming_content) == b'{"custom_id": "a"}\n'  # type: ignore[arg-type]
    assert admin_client.get("/admin/batches/file/999999/download/").status_code == 404
    assert admin_client.get("/admin/batches/file/").status_code == 200
    assert admin_client.get(f"/admin/batches/file/{finished.output_file_id}/change/").status_code == 200


def test_tenant_members_reach_no_admin_page(alice: Party, finished: Batch) -> None:
    client = Client()
    client.force_login(alice.user)
    for path in ("/admin/batches/batch/", "/admin/batches/batch/queues/",
                 f"/admin/batches/file/{finished.output_file_id}/download/"):
        assert client.get(path).status_code == 302, path  # to the admin's sign-in


def test_the_queues_page_shows_the_counts(admin_client: Client, alice: Party, bob: Party) -> None:
    make_batch(alice, total=10, succeeded=3, failed=1, running=2)
    make_batch(bob, queue="gpu", status=Batch.Status.VALIDATING)
    page = admin_client.get("/admin/batches/batch/queues/")
    html = re.sub(r">\s+<", "><", page.content.decode())
    assert page.status_code == 200 and "Per queue and tenant" in html
    assert "<td>default</td><td>default</td><td>4</td><td>0</td><td>2</td><td>3</td><td>1</td>" in html
    assert "<td>gpu</td><td>bob</td><td>0</td><td>1</td>" in html
    assert "<style" not in html.split('id="content-main"')[1] and "<script" not in html.split('id="content-main"')[1]


def test_the_queues_page_with_no_batches(admin_client: Client) -> None:
    page = admin_client.get("/admin/batches/batch/queues/")
    assert page.status_code == 200 and "No batches yet." in page.content.decode()


def test_parts_render(admin_client: Client, alice: Party) -> None:
    batch = make_batch(alice, total=3, running=1)
    part = BatchPart.objects.get(batch=batch)
    assert batch.public_id in admin_client.get("/admin/batches/batchpart/?state__exact=running").content.decode()
    assert admin_client.get(f"/admin/batches/batchpart/{part.pk}/change/").status_code == 200


def test_the_cancel_action(admin_client: Client, alice: Party, finished: Batch) -> None:
    running = make_batch(alice, total=3, running=1)
    page = admin_client.post("/admin/batches/batch/", {"action": "cancel_batches",
                                                       "_selected_action": [running.pk, finished.pk]}, follow=True)
    html = page.content.decode()
    assert page.status_code == 200 and f"Cancelling {running.public_id}" in html and "Cannot cancel" in html
    assert Batch.objects.get(pk=running.pk).status == Batch.Status.CANCELLING
    assert Batch.objects.get(pk=finished.pk).status == Batch.Status.COMPLETED


def test_the_batch_settings_are_in_the_admin_forms(admin_client: Client, alice: Party) -> None:
    route = ModelRoute.objects.create(name="demo")
    price = Price.objects.create(model="demo", input_per_million=1, output_per_million=2)
    assert 'name="batch_tier"' in admin_client.get(f"/admin/accounts/tenant/{alice.tenant.pk}/change/").content.decode()
    Tenant.objects.filter(pk=alice.tenant.pk).update(batch_tier="high")
    assert "Alice" in admin_client.get("/admin/accounts/tenant/?batch_tier__exact=high").content.decode()
    assert "Alice" not in admin_client.get("/admin/accounts/tenant/?batch_tier__exact=low").content.decode()
    route_page = admin_client.get(f"/admin/proxy/modelroute/{route.pk}/change/").content.decode()
    assert 'name="batch_queue"' in route_page and 'name="batch_discount_percent"' in route_page
    assert 'name="batch_discount_percent"' in admin_client.get(f"/admin/billing/price/{price.pk}/change/").content.decode()
    for bad in ("celery", "two words", "-x", "é"):
        assert not ModelRouteForm({"name": "other", "batch_queue": bad}).is_valid(), bad
    form = ModelRouteForm({"name": "other", "batch_queue": " gpu.a-1 ", "batch_discount_percent": "50"})
    assert form.is_valid(), form.errors
    assert form.save().batch_queue == "gpu.a-1"


def test_operators_set_batch_settings_through_the_api_and_owners_cannot(alice: Party) -> None:
    operator = token_client(User.objects.create_user("ops", is_staff=True))
    assert operator.get("/api/tenants/alice/").json()["batch_tier"] == "default"
    assert operator.patch("/api/tenants/alice/", {"batch_tier": "high"}, content_type="application/json").status_code == 200
    assert operator.patch("/api/tenants/alice/", {"batch_tier": "urgent"}, content_type="application/json").status_code == 400
    assert Tenant.objects.get(pk=alice.tenant.pk).batch_tier == "high"
    owner = token_client(alice.user)
    assert owner.get("/api/tenants/alice/").json()["batch_tier"] == "high"  # owners read it
    refused = owner.patch("/api/tenants/alice/", {"batch_tier": "low"}, content_type="application/json")
    assert refused.status_code == 403 and Tenant.objects.get(pk=alice.tenant.pk).batch_tier == "high"
    session = Client()
    session.force_login(alice.user)
    assert session.get("/admin/accounts/tenant/").status_code == 302

    route = operator.post("/api/routes/", {"name": "demo", "batch_queue": "gpu", "batch_discount_percent": "50"},
                          content_type="application/json")
    assert route.status_code == 201 and route.json()["batch_queue"] == "gpu"
    assert route.json()["batch_discount_percent"] == "50.00"
    for bad in ({"batch_queue": "celery"}, {"batch_queue": "a b"}, {"batch_discount_percent": "150"},
                {"batch_discount_percent": "-1"}):
        got = operator.patch(f"/api/routes/{route.json()['id']}/", bad, content_type="application/json")
        assert got.status_code == 400 and set(bad) <= set(got.json()), bad
    price = operator.post("/api/prices/", {"model": "demo", "input_per_million": "1", "output_per_million": "2",
                                           "batch_discount_percent": "50"}, content_type="application/json")
    assert price.status_code == 201 and Price.objects.get(pk=price.json()["id"]).batch_discount_percent == Decimal(50)
    assert operator.patch(f"/api/prices/{price.json()['id']}/", {"batch_discount_percent": "100.5"},
                          content_type="application/json").status_code == 400
    assert owner.patch(f"/api/prices/{price.json()['id']}/", {"batch_discount_percent": "90"},
                       content_type="application/json").status_code == 403
