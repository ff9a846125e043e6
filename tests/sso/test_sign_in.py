"""Single sign-on: the whole code flow against a local provider, and what the provider's groups grant."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client

from accounts.models import Membership, Tenant
from tests.factories import make_tenant, make_user

from .conftest import Provider


def roles(user: User) -> dict[str, str]:
    return dict(Membership.objects.filter(user=user).values_list("tenant__slug", "role"))


def signed_in(client: Client) -> User | None:
    user = client.get("/keys/").wsgi_request.user
    return user if user.is_authenticated else None


def test_first_sign_in_creates_the_user_with_the_mapped_tenant_roles(sso: Provider, client: Client) -> None:
    make_tenant("acme"), make_tenant("globex")
    r = sso.sign_in(client, "ann-1", next_url="/keys/", email="ann@example.com",
                    groups=["acme-admins", "globex-devs", "unrelated"])
    assert r.status_code == 302 and r["Location"] == "/keys/"
    user = User.objects.get(email="ann@example.com")
    assert user.username == "ann@example.com" and not user.has_usable_password()
    assert roles(user) == {"acme": "owner", "globex": "member"}
    assert not user.is_staff and not user.is_superuser
    assert signed_in(client) == user
    assert client.get("/keys/").status_code == 200


def test_the_highest_role_any_group_grants_wins(sso: Provider, client: Client) -> None:
    make_tenant("acme")
    sso.sign_in(client, "ann-2", email="ann@example.com", groups=["acme-devs", "acme-admins"])
    assert roles(User.objects.get(email="ann@example.com")) == {"acme": "owner"}


def test_staff_and_superuser_status_follow_the_groups_on_each_sign_in(sso: Provider) -> None:
    sso.sign_in(Client(), "op-1", email="op@example.com", groups=["ops"])
    user = User.objects.get(email="op@example.com")
    assert (user.is_staff, user.is_superuser) == (True, False)
    admin = Client()
    sso.sign_in(admin, "op-1", email="op@example.com", groups=["root"])
    user.refresh_from_db()
    assert (user.is_staff, user.is_superuser) == (True, True)
    assert admin.get("/admin/").status_code == 200
    sso.sign_in(Client(), "op-1", email="op@example.com", groups=[])
    user.refresh_from_db()
    assert (user.is_staff, user.is_superuser) == (False, False)


def test_sign_in_again_with_changed_groups_changes_or_removes_the_membership(sso: Provider, client: Client) -> None:
    acme = make_tenant("acme")
    make_user("alice", tenant=acme)  # another owner, so ann may be demoted
    sso.sign_in(client, "ann-3", email="ann@example.com", groups=["acme-admins"])
    user = User.objects.get(email="ann@example.com")
    assert roles(user) == {"acme": "owner"}
    sso.sign_in(Client(), "ann-3", email="ann@example.com", groups=["acme-devs"])
    assert roles(user) == {"acme": "member"}
    sso.sign_in(Client(), "ann-3", email="ann@example.com", groups=[])
    assert roles(user) == {}
    assert User.objects.filter(email="ann@example.com").count() == 1


def test_the_last_owner_of_a_tenant_is_never_demoted_or_removed(sso: Provider) -> None:
    make_tenant("acme")
    sso.sign_in(Client(), "ann-4", email="ann@example.com", groups=["acme-admins"])
    user = User.objects.get(email="ann@example.com")
    sso.sign_in(Client(), "ann-4", email="ann@example.com", groups=["acme-devs"])
    assert roles(user) == {"acme": "owner"}
    sso.sign_in(Client(), "ann-4", email="ann@example.com", groups=[])
    assert roles(user) == {"acme": "owner"}


def test_a_membership_made_locally_is_raised_but_never_lowered_or_removed(sso: Provider) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    make_user("alice", tenant=acme)
    local = make_user("bob", tenant=acme, role=Membership.Role.MEMBER, email="Bob@Example.com")
    make_user("carol", tenant=globex)
    Membership.objects.create(tenant=globex, user=local, role=Membership.Role.OWNER)
    sso.sign_in(Client(), "bob-1", email="bob@example.com", groups=[])
    assert roles(local) == {"acme": "member", "globex": "owner"}  # found by email, nothing taken away
    sso.sign_in(Client(), "bob-1", email="bob@example.com", groups=["acme-admins", "globex-devs"])
    assert roles(local) == {"acme": "owner", "globex": "owner"}
    sso.sign_in(Client(), "bob-1", email="bob@example.com", groups=[])
    assert roles(local) == {"acme": "owner", "globex": "owner"}
    assert User.objects.count() == 3


def test_a_user_without_a_mapped_group_gets_no_tenant(sso: Provider, client: Client) -> None:
    make_tenant("acme")
    r = sso.sign_in(client, "dan-1", email="dan@example.com", groups=["somewhere-else"])
    assert r.status_code == 302
    page = client.get("/keys/")
    assert page.status_code == 403 and b"not a member of any tenant" in page.content


def test_a_member_of_one_mapped_tenant_cannot_reach_another(sso: Provider, client: Client) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    sso.sign_in(client, "ann-5", email="ann@example.com", groups=["acme-devs"])
    assert client.post("/switch/", {"tenant": "globex"}).status_code == 404
    assert client.get("/keys/").context["request"].tenant == acme
    assert not Membership.objects.filter(tenant=globex).exists()


def test_a_mapped_tenant_that_does_not_exist_is_skipped(sso: Provider, client: Client) -> None:
    make_tenant("acme")
    r = sso.sign_in(client, "ann-6", email="ann@example.com", groups=["globex-devs", "acme-devs"])
    assert r.status_code == 302
    assert roles(User.objects.get(email="ann@example.com")) == {"acme": "member"}
    assert not Tenant.objects.filter(slug="globex").exists()


def test_next_is_followed_only_to_this_site(sso: Provider) -> None:
    r = sso.sign_in(Client(), "eve-1", next_url="https://evil.example/", email="eve@example.com")
    assert r.status_code == 302 and r["Location"] == "/"
    r = sso.sign_in(Client(), "eve-1", next_url="/requests/", email="eve@example.com")
    assert r["Location"] == "/requests/"


def test_a_username_taken_by_someone_else_gets_a_suffix(sso: Provider) -> None:
    make_user("ann@example.com", email="other@example.com")
    sso.sign_in(Client(), "ann-7xyz", email="ann@example.com")
    assert User.objects.get(email="ann@example.com").username == "ann@example.com-ann-7xyz"
