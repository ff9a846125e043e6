from __future__ import annotations

import pytest

from proxy.models import ModelRoute
from proxy.services import ensure_demo_route


@pytest.fixture
def demo(db: None) -> ModelRoute:
    """The built-in demo model's route, for tests that send requests in process."""
    return ensure_demo_route()
