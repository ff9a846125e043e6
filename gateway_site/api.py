"""The management API under /api/: a router over each app's viewsets, its OpenAPI schema and docs page."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from accounts.api import ApiKeyViewSet, ProjectViewSet, TenantViewSet
from accounts.invitations_api import InvitationViewSet
from batches.api import QueuesView
from billing.api import BudgetViewSet, PriceViewSet
from billing.usage_api import UsageViewSet
from proxy.api import DeploymentViewSet, ProviderViewSet, RouteViewSet

from .api_errors import not_found

router = DefaultRouter()
router.register("tenants", TenantViewSet, basename="tenant")
router.register("keys", ApiKeyViewSet, basename="apikey")
router.register("projects", ProjectViewSet, basename="project")
router.register("invitations", InvitationViewSet, basename="invitation")
router.register("budgets", BudgetViewSet, basename="budget")
router.register("prices", PriceViewSet, basename="price")
router.register("usage", UsageViewSet, basename="usage")
router.register("providers", ProviderViewSet, basename="provider")
router.register("routes", RouteViewSet, basename="route")
router.register("deployments", DeploymentViewSet, basename="deployment")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file: the inline one breaks the Content-Security-Policy.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("queues/", QueuesView.as_view(), name="queues"),
    path("", include(router.urls)),
    # Any other path ending in a slash (one without still gets APPEND_SLASH's redirect), e.g. a slug with a dot.
    re_path(r"^.*/$", not_found),
]
