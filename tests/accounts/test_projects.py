"""Projects: services, the Projects and Keys pages, the admin and the API. A key's project is on each of its /v1
ledger rows, moving the key changes the next row at once, and bob never reaches or uses alice's projects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client

from accounts import keys, services
from accounts.keys import lookup
from accounts.models import ApiKey, Membership, Project
from accounts.projects import create_project, delete_project, set_key_project, update_project
from billing.models import UsageRecord
from proxy import routing
from proxy.services import ensure_demo_route

from ..api.conftest import token_client
from ..conftest import Party
from ..factories import make_key, make_user

pytestmark = pytest.mark.django_db

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture
def demo(db: None) -> None:
    ensure_demo_route()
    routing.invalidate()


def chat(secret: str) -> UsageRecord:
    """One /v1 request with the key; returns its ledger row."""
    before = UsageRecord.objects.order_by("-id").values_list("id", flat=True).first() or 0
    response = Client().post("/v1/chat/completions", json.dumps(CHAT), content_type="application/json",
                             headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.content
    return UsageRecord.objects.get(id__gt=before)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def member_of(party: Party, username: str) -> User:
    return make_user(username, tenant=party.tenant, role=Membership.Role.MEMBER)


# Services


def test_create_project_with_owners_who_are_members(alice: Party) -> None:
    carol = member_of(alice, "carol")
    project = create_project(tenant=alice.tenant, name="Search", slug="search", owners=[alice.user, carol])
    assert set(project.owners.all()) == {alice.user, carol} and project.tenant == alice.tenant


def test_an_owner_must_be_a_member_of_the_tenant(alice: Party, bob: Party) -> None:
    with pytest.raises(ValidationError) as e:
        create_project(tenant=alice.tenant, name="Search", slug="search", owners=[bob.user])
    assert "not a member of Alice" in str(e.value.message_dict["owners"])
    assert not Project.objects.exists()
    project = create_project(tenant=alice.tenant, name="Search", slug="search")
    with pytest.raises(ValidationError):
        update_project(project=project, owners=[bob.user])
    assert list(project.owners.all()) == []


def test_a_member_who_leaves_no_longer_owns_the_tenants_projects(alice: Party, bob: Party) -> None:
    carol = member_of(alice, "carol")
    services.add_member(tenant=bob.tenant, user=carol)
    ours = create_project(tenant=alice.tenant, name="Search", slug="search", owners=[carol, alice.user])
    theirs = create_project(tenant=bob.tenant, name="Bob's", slug="bobs", owners=[carol])
    Membership.objects.get(tenant=alice.tenant, user=carol).delete()
    assert list(ours.owners.all()) == [alice.user] and list(theirs.owners.all()) == [carol]


def test_slugs_are_unique_within_a_tenant_only(alice: Party, bob: Party) -> None:
    create_project(tenant=alice.tenant, name="Search", slug="search")
    with pytest.raises(ValidationError):
        create_project(tenant=alice.tenant, name="Other search", slug="search")
    assert create_project(tenant=bob.tenant, name="Search", slug="search").tenant == bob.tenant
    with pytest.raises(ValidationError):
        create_project(tenant=alice.tenant, name="Bad", slug="not a slug")


def test_rename_and_replace_owners(alice: Party) -> None:
    carol = member_of(alice, "carol")
    project = create_project(tenant=alice.tenant, name="Search", slug="search", owners=[alice.user])
    update_project(project=project, name="Web search", owners=[carol])
    project.refresh_from_db()
    assert (project.name, project.slug, list(project.owners.all())) == ("Web search", "search", [carol])


def test_a_key_gets_only_a_project_of_its_own_tenant(alice: Party, bob: Party) -> None:
    bobs = create_project(tenant=bob.tenant, name="Bob's", slug="bobs")
    with pytest.raises(ValidationError):
        services.issue_key(tenant=alice.tenant, name="k", project=bobs)
    with pytest.raises(ValidationError):
        set_key_project(key=alice.key, project=bobs)
    assert ApiKey.objects.get(pk=alice.key.pk).project is None


def test_rotation_keeps_the_project(alice: Party) -> None:
    project = create_project(tenant=alice.tenant, name="Search", slug="search")
    key, _ = make_key(alice.tenant, name="search backend", project=project)
    new, secret = services.rotate_key(key=key)
    assert new.project == project and lookup(secret).project_id == project.pk


# /v1


def test_a_keys_requests_carry_its_project_and_a_move_applies_at_once(alice: Party, demo: None) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    ads = create_project(tenant=alice.tenant, name="Ads", slug="ads")
    key, secret = make_key(alice.tenant, name="backend", project=search)
    assert chat(secret).project_id == search.pk
    assert key.prefix in keys._local  # the lookup is cached in this process...
    set_key_project(key=key, project=ads)
    assert chat(secret).project_id == ads.pk  # ...and the move dropped it: the very next row names the new project
    set_key_project(key=key, project=None)
    assert chat(secret).project_id is None


def test_deleting_a_project_drops_its_keys_cached_lookups(alice: Party, demo: None) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    key, secret = make_key(alice.tenant, name="backend", project=search)
    assert lookup(secret).project_id == search.pk
    delete_project(project=search)
    assert chat(secret).project_id is None  # not a row pointing at the deleted project
    assert ApiKey.objects.get(pk=key.pk).project is None


# The Projects page


def test_the_projects_page_lists_projects_keys_and_this_months_spend(alice: Party, bob: Party, demo: None) -> None:
    carol = member_of(alice, "carol")
    search = create_project(tenant=alice.tenant, name="Search", slug="search", owners=[carol])
    set_key_project(key=alice.key, project=search)
    row = chat(alice.secret)
    UsageRecord.objects.filter(pk=row.pk).update(cost_picos=1_234_000_000)  # $0.001234
    create_project(tenant=bob.tenant, name="Bob's secret project", slug="bobs")
    page = signed_in(alice.user).get("/projects/").content.decode()
    assert "Search" in page and "carol" in page and "alice&#x27;s key" in page and "$0.001234" in page
    assert "Bob&#x27;s secret project" not in page and "Create a project" in page
    members_view = signed_in(carol).get("/projects/").content.decode()
    assert "Search" in members_view and "Create a project" not in members_view


def test_owners_create_and_edit_projects_members_cannot(alice: Party, bob: Party) -> None:
    carol = member_of(alice, "carol")
    owner = signed_in(alice.user)
    created = owner.post("/projects/", {"name": "Search", "slug": "search", "owners": [carol.pk]})
    assert created.status_code == 302
    project = Project.objects.get(tenant=alice.tenant, slug="search")
    assert list(project.owners.all()) == [carol]
    taken = owner.post("/projects/", {"name": "Again", "slug": "search"})
    assert taken.status_code == 400 and Project.objects.filter(tenant=alice.tenant).count() == 1
    outsider = owner.post("/projects/", {"name": "Ads", "slug": "ads", "owners": [bob.user.pk]})
    assert outsider.status_code == 400 and not Project.objects.filter(slug="ads").exists()
    edited = owner.post(f"/projects/{project.pk}/", {"name": "Web search", "slug": "web", "owners": [alice.user.pk]})
    assert edited.status_code == 302
    project.refresh_from_db()
    assert (project.name, project.slug, list(project.owners.all())) == ("Web search", "web", [alice.user])
    as_member = signed_in(carol)
    assert as_member.post("/projects/", {"name": "Mine", "slug": "mine"}).status_code == 403
    assert as_member.post(f"/projects/{project.pk}/", {"name": "X", "slug": "x"}).status_code == 403
    assert Project.objects.filter(tenant=alice.tenant).count() == 1


def test_bob_cannot_open_or_edit_alices_project(alice: Party, bob: Party) -> None:
    project = create_project(tenant=alice.tenant, name="Search", slug="search")
    as_bob = signed_in(bob.user)
    assert as_bob.get(f"/projects/{project.pk}/").status_code == 404
    assert as_bob.post(f"/projects/{project.pk}/", {"name": "Mine", "slug": "mine"}).status_code == 404
    assert Project.objects.get(pk=project.pk).name == "Search"


# The Keys page


def test_an_owner_creates_a_key_in_a_project_and_moves_it(alice: Party, demo: None) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    ads = create_project(tenant=alice.tenant, name="Ads", slug="ads")
    owner = signed_in(alice.user)
    assert "No project" in owner.get("/keys/").content.decode()
    created = owner.post("/keys/", {"name": "backend", "project": search.pk})
    assert created.status_code == 200 and "tg-" in created.content.decode()
    key = ApiKey.objects.get(name="backend")
    assert key.project == search
    assert chat(created.context["secret"]).project_id == search.pk
    assert owner.post(f"/keys/{key.pk}/project/", {"project": ads.pk}).status_code == 302
    assert chat(created.context["secret"]).project_id == ads.pk
    assert owner.post(f"/keys/{key.pk}/project/", {"project": ""}).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).project is None
    assert owner.post(f"/keys/{key.pk}/project/", {"project": "1e9"}).status_code == 302  # refused, not a 500
    assert ApiKey.objects.get(pk=key.pk).project is None


def test_members_see_a_keys_project_but_do_not_choose_it(alice: Party) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    set_key_project(key=alice.key, project=search)
    carol = signed_in(member_of(alice, "carol"))
    page = carol.get("/keys/").content.decode()
    assert "Search" in page and 'name="project"' not in page
    assert carol.post(f"/keys/{alice.key.pk}/project/", {"project": ""}).status_code == 403
    carol.post("/keys/", {"name": "carol's", "project": search.pk})
    assert ApiKey.objects.get(name="carol's").project is None
    assert ApiKey.objects.get(pk=alice.key.pk).project == search


def test_bobs_project_cannot_be_set_on_alices_key_from_the_page(alice: Party, bob: Party) -> None:
    bobs = create_project(tenant=bob.tenant, name="Bob's", slug="bobs")
    owner = signed_in(alice.user)
    assert owner.post(f"/keys/{alice.key.pk}/project/", {"project": bobs.pk}).status_code == 404
    refused = owner.post("/keys/", {"name": "sneaky", "project": bobs.pk})
    assert refused.status_code == 200 and not ApiKey.objects.filter(name="sneaky").exists()
    assert "Bob&#x27;s" not in owner.get("/keys/").content.decode()
    assert signed_in(bob.user).post(f"/keys/{alice.key.pk}/project/", {"project": bobs.pk}).status_code == 404
    assert ApiKey.objects.get(pk=alice.key.pk).project is None


# Admin


def key_change(key: ApiKey, **fields: Any) -> dict[str, Any]:
    return {"name": key.name, "expires_at_0": "", "expires_at_1": "", "allowed_models": "", "response_cache": "route",
            "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0", **fields}


def test_the_key_admin_sets_only_a_project_of_the_keys_tenant(admin_client: Client, alice: Party, bob: Party) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    bobs = create_project(tenant=bob.tenant, name="Bob's", slug="bobs")
    page = admin_client.get(f"/admin/accounts/apikey/{alice.key.pk}/change/").content.decode()
    assert "Alice / Search" in page and "Bob / Bob" not in page
    refused = admin_client.post(f"/admin/accounts/apikey/{alice.key.pk}/change/", key_change(alice.key, project=bobs.pk))
    assert refused.status_code == 200 and ApiKey.objects.get(pk=alice.key.pk).project is None
    lookup(alice.secret)
    saved = admin_client.post(f"/admin/accounts/apikey/{alice.key.pk}/change/", key_change(alice.key, project=search.pk))
    assert saved.status_code == 302, saved.content
    assert ApiKey.objects.get(pk=alice.key.pk).project == search
    assert lookup(alice.secret).project_id == search.pk  # the cached lookup was dropped
    added = admin_client.post("/admin/accounts/apikey/add/", {
        "tenant": alice.tenant.pk, "name": "wrong", "project": bobs.pk, "expires_at_0": "", "expires_at_1": "",
        "allowed_models": ""})
    assert added.status_code == 200 and "tenant&#x27;s projects" in added.content.decode()
    assert not ApiKey.objects.filter(name="wrong").exists()
    admin_client.post("/admin/accounts/apikey/add/", {
        "tenant": alice.tenant.pk, "name": "right", "project": search.pk, "expires_at_0": "", "expires_at_1": "",
        "allowed_models": ""})
    assert ApiKey.objects.get(name="right").project == search


def test_the_project_admin_checks_owners_and_filters_by_tenant(admin_client: Client, alice: Party, bob: Party) -> None:
    refused = admin_client.post("/admin/accounts/project/add/", {
        "tenant": alice.tenant.pk, "name": "Search", "slug": "search", "owners": [bob.user.pk]})
    assert refused.status_code == 200 and "not a member of Alice" in refused.content.decode()
    assert admin_client.post("/admin/accounts/project/add/", {
        "tenant": alice.tenant.pk, "name": "Search", "slug": "search", "owners": [alice.user.pk]}).status_code == 302
    project = Project.objects.get(slug="search")
    create_project(tenant=bob.tenant, name="Bobs", slug="bobs")
    listed = admin_client.get("/admin/accounts/project/", {"tenant__id__exact": alice.tenant.pk}).content.decode()
    assert "Search" in listed and "Bobs" not in listed
    change = admin_client.get(f"/admin/accounts/project/{project.pk}/change/")
    assert list(change.context["adminform"].form.fields["owners"].queryset) == [alice.user]


def test_deleting_a_project_in_the_admin_frees_its_keys(admin_client: Client, alice: Party) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    set_key_project(key=alice.key, project=search)
    lookup(alice.secret)
    response = admin_client.post(f"/admin/accounts/project/{search.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Project.objects.exists()
    assert lookup(alice.secret).project_id is None


# Management API


def test_the_projects_endpoint_is_scoped_to_the_callers_tenants(alice: Party, bob: Party) -> None:
    mine = create_project(tenant=alice.tenant, name="Search", slug="search", owners=[alice.user])
    theirs = create_project(tenant=bob.tenant, name="Bob's", slug="bobs")
    as_alice = token_client(alice.user)
    listed = as_alice.get("/api/projects/").json()
    assert [p["slug"] for p in listed["results"]] == ["search"] and listed["results"][0]["owners"] == ["alice"]
    assert as_alice.get(f"/api/projects/{theirs.pk}/").status_code == 404
    assert as_alice.patch(f"/api/projects/{theirs.pk}/", {"name": "Mine"}, content_type="application/json").status_code == 404
    assert as_alice.delete(f"/api/projects/{theirs.pk}/").status_code == 404
    into_bobs = as_alice.post("/api/projects/", {"tenant": "bob", "name": "X", "slug": "x"}, content_type="application/json")
    assert into_bobs.status_code == 400 and "tenant" in into_bobs.json()
    bobs_owner = as_alice.post("/api/projects/", {"tenant": "alice", "name": "X", "slug": "x", "owners": ["bob"]},
                               content_type="application/json")
    assert bobs_owner.status_code == 400 and "owners" in bobs_owner.json()
    assert Project.objects.get(pk=theirs.pk).name == "Bob's" and Project.objects.count() == 2
    operator = token_client(User.objects.create_user("ops", is_staff=True))
    assert {p["slug"] for p in operator.get("/api/projects/").json()["results"]} == {"search", "bobs"}
    assert mine.pk in [p["id"] for p in listed["results"]]


def test_owners_create_rename_and_delete_projects_through_the_api(alice: Party, demo: None) -> None:
    carol = member_of(alice, "carol")
    api = token_client(alice.user)
    created = api.post("/api/projects/", {"tenant": "alice", "name": "Search", "slug": "search", "owners": ["carol"]},
                       content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["tenant"], body["owners"], body["keys"]) == ("alice", ["carol"], [])
    assert api.post("/api/projects/", {"tenant": "alice", "name": "Again", "slug": "search"},
                    content_type="application/json").status_code == 400
    renamed = api.patch(f"/api/projects/{body['id']}/", {"name": "Web search", "owners": []}, content_type="application/json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Web search" and renamed.json()["owners"] == []
    project = Project.objects.get(pk=body["id"])
    set_key_project(key=alice.key, project=project)
    assert api.get(f"/api/projects/{project.pk}/").json()["keys"] == [alice.key.pk]
    chat(alice.secret)
    in_use = api.delete(f"/api/projects/{project.pk}/")
    assert in_use.status_code == 409 and "usage records" in in_use.json()["detail"]
    assert carol.owned_projects.count() == 0


def test_the_key_api_sets_a_project_by_slug_or_id_within_the_keys_tenant(alice: Party, bob: Party, demo: None) -> None:
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    ads = create_project(tenant=alice.tenant, name="Ads", slug="ads")
    create_project(tenant=bob.tenant, name="Bob's", slug="bobs")
    api = token_client(alice.user)
    created = api.post("/api/keys/", {"tenant": "alice", "name": "backend", "project": "search"},
                       content_type="application/json")
    assert created.status_code == 201 and created.json()["project"] == "search"
    secret, key_id = created.json()["key"], created.json()["id"]
    assert chat(secret).project_id == search.pk
    moved = api.patch(f"/api/keys/{key_id}/", {"project": ads.pk}, content_type="application/json")
    assert moved.status_code == 200 and moved.json()["project"] == "ads"
    assert chat(secret).project_id == ads.pk  # the move applies to the very next request
    for wrong in ("bobs", Project.objects.get(slug="bobs").pk, "nope", True, {"slug": "ads"}, ""):
        refused = api.patch(f"/api/keys/{key_id}/", {"project": wrong}, content_type="application/json")
        assert refused.status_code == 400 and "project" in refused.json(), wrong
    assert ApiKey.objects.get(pk=key_id).project == ads
    cleared = api.patch(f"/api/keys/{key_id}/", {"project": None}, content_type="application/json")
    assert cleared.status_code == 200 and cleared.json()["project"] is None
    into_bobs = api.post("/api/keys/", {"tenant": "alice", "name": "x", "project": "bobs"}, content_type="application/json")
    assert into_bobs.status_code == 400 and not ApiKey.objects.filter(name="x").exists()
    assert token_client(bob.user).patch(f"/api/keys/{key_id}/", {"project": "bobs"},
                                        content_type="application/json").status_code == 404
