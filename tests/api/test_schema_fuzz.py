"""The management API against its own OpenAPI schema: schemathesis sends generated requests, valid and deliberately
invalid, to a live server as an operator and as a tenant owner. Any 5xx, a status code, content type or header the
schema does not document, or a response body that does not match it fails the test.

Path ids are drawn from the rows the test made as well as at random, so changes, deletes (of rows still referenced
by the ledger too) and key rotations reach real objects. Bounded: derandomized (a run is repeatable), a few dozen
cases per operation and role; TOLLGATE_API_FUZZ_EXAMPLES raises that for a longer hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts import services
from accounts.models import ApiKey
from billing.models import Budget, Price, UsageRecord
from proxy.models import Deployment, ModelRoute, Provider

from ..conftest import make_party
from ..factories import make_key, make_route
from ..live import tollgate_server

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see the rows the test made

EXAMPLES = int(os.environ.get("TOLLGATE_API_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# No shrinking: each request goes to a live server, and a failure's own example already reproduces it (curl).
CONFIG: dict[str, Any] = {
    "generation": {"mode": "all", "deterministic": True, "database": "none", "no-shrink": True},
    "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
    "request-timeout": 30,
}
# The operators' endpoints answer owners 403 before reading anything (tests/api/test_api.py has each).
OPERATORS_ONLY = {"include-path-regex": "^/api/(prices|providers|routes|deployments)/", "enabled": False}


@pytest.fixture(scope="module")
def api_server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("api-fuzz") / "tollgate.log"
    # The fuzz sends thousands of requests a minute; the rate limit has its own test.
    with tollgate_server(connection.settings_dict["NAME"], log, TOLLGATE_API_RATE="1000000/m") as url:
        yield url


def seed() -> dict[str, list[Any]]:
    """Rows for the fuzz to reach, some still referenced by the ledger; returns the path ids of each collection and
    the values that name them in a body."""
    alice, bob = make_party("alice"), make_party("bob")
    expired, _ = make_key(alice.tenant, name="expired", expires_at=timezone.now() + timedelta(seconds=1))
    services.revoke_key(key=make_key(alice.tenant, name="revoked")[0])
    make_route("gpt-4o", upstream_model="gpt-4o", base_url="http://127.0.0.1:9/v1", provider_name="openai")
    price = Price.objects.create(model="gpt-4o", input_per_million=1, output_per_million=2)
    UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="gpt-4o",
                               end_reason="complete", status_code=200, price=price)
    Budget.objects.create(tenant=alice.tenant, amount=10)
    Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=1, set_by=Budget.SetBy.TENANT)
    Budget.objects.create(tenant=bob.tenant, amount=5)
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    return {
        "tenants": ["alice", "bob"],
        "keys": list(ApiKey.objects.values_list("pk", flat=True)),
        "budgets": list(Budget.objects.values_list("pk", flat=True)),
        "prices": [price.pk],
        "providers": list(Provider.objects.values_list("pk", flat=True)),
        "routes": list(ModelRoute.objects.values_list("pk", flat=True)),
        "deployments": list(Deployment.objects.values_list("pk", flat=True)),
        "tenant": ["alice", "bob"],
        "key": list(ApiKey.objects.values_list("pk", flat=True)),
        "route": list(ModelRoute.objects.values_list("name", flat=True)),
        "provider": list(Provider.objects.values_list("name", flat=True)),
        "provider id": list(Provider.objects.values_list("pk", flat=True)),
    }


@pytest.fixture(params=["operator", "owner"])
def api_schema(request: pytest.FixtureRequest, api_server: str, transactional_db: None) -> schemathesis.BaseSchema:
    known = seed()
    user = (User.objects.create_user("ops", is_staff=True) if request.param == "operator"
            else User.objects.get(username="alice"))
    _, token = services.issue_management_token(user=user, name="fuzz")
    headers = {"Authorization": f"Bearer {token}"}
    config = {**CONFIG, "operations": [OPERATORS_ONLY]} if request.param == "owner" else CONFIG
    schema = schemathesis.openapi.from_url(f"{api_server}/api/schema/?format=json", headers=headers,
                                           config=schemathesis.Config.from_dict(config))
    schema.config.update(base_url=api_server, headers=headers)

    @schema.hook
    def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> Any:
        collection = context.operation.path.split("/")[2]
        name = "slug" if collection == "tenants" else "id"
        if not path_parameters or name not in path_parameters or not known.get(collection):
            return st.just(path_parameters)
        real = st.sampled_from(known[collection]).map(lambda value: {**path_parameters, name: value})
        return real | st.just(path_parameters)

    @schema.hook
    def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
        # Fields that name another object get real names too, or nearly every write stops at "does not exist".
        collection = context.operation.path.split("/")[2]
        fields = [name for name in ("tenant", "key", "route", "provider") if isinstance(body, dict) and name in body]
        if not fields:
            return st.just(body)
        sources = {name: known["provider id" if (collection, name) == ("prices", "provider") else name]
                   for name in fields}
        real = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in sources.items()})
        return real.map(lambda values: {**body, **values}) | st.just(body)

    return schema


@pytest.fixture(autouse=True)
def node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32 renames the test per operation through Node._nodeid, which pytest 9.2 no longer has.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), print_blob=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
def test_the_management_api_answers_as_its_schema_says(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
