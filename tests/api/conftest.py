"""Management API fixtures: clients signed in with a management token, and fresh rate limit counters."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.test import Client

from accounts import services


def token_client(user: User) -> Client:
    _, token = services.issue_management_token(user=user, name="test")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def operator(db: None) -> Client:
    return token_client(User.objects.create_user("ops", is_staff=True))


@pytest.fixture(autouse=True)
def fresh_limits() -> None:
    caches["limits"].clear()
