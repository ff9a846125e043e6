"""The ledger admin's filters by project, tag and end user, each read through an index or the tenant's rows.

None of them lists its choices from the ledger: a DISTINCT over millions of rows would scan them all on every page.
Projects are listed from their own table; a tag and an end user are typed (``?tag=team:search``, ``?end_user=u-1``,
or the search box's ``tag:team:search`` / ``user:u-1``) and only the value in use is shown.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import Project

from . import tags
from .models import UsageRecord

PROJECT_CHOICES = 200  # projects offered in the sidebar; others are reached by their id in the URL


def by_tag(queryset: QuerySet[UsageRecord], tag: str) -> QuerySet[UsageRecord]:
    """The rows carrying ``tag``; none for a value no tag can be (never a database error, e.g. on NUL)."""
    return queryset.filter(tags__contains=tags.needle(tag)) if tags.is_tag(tag) else queryset.none()


def by_end_user(queryset: QuerySet[UsageRecord], end_user: str) -> QuerySet[UsageRecord]:
    if len(end_user) > tags.MAX_END_USER_LENGTH or "\x00" in end_user:
        return queryset.none()
    return queryset.filter(end_user=end_user)


class TypedFilter(admin.SimpleListFilter):
    """A filter whose value is typed, not picked: the sidebar shows the value in use and "All"."""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []


class TagFilter(TypedFilter):
    title, parameter_name = "tag", "tag"

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        value = self.value()
        return by_tag(queryset, value.strip()) if value else queryset


class EndUserFilter(TypedFilter):
    title, parameter_name = "end user", "end_user"

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        value = self.value()
        return by_end_user(queryset, value) if value else queryset


class ProjectFilter(admin.SimpleListFilter):
    """By project, through the usage_project_time index."""

    title, parameter_name = "project", "project"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        projects = Project.objects.select_related("tenant").order_by("tenant__slug", "name")[:PROJECT_CHOICES]
        return [(str(p.pk), f"{p.tenant.slug} / {p.name}") for p in projects]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        value = self.value()
        if not value:
            return queryset
        if not (value.isascii() and value.isdigit() and len(value) < 19):
            return queryset.none()
        return queryset.filter(project_id=int(value))


def search(queryset: QuerySet[UsageRecord], term: str) -> QuerySet[UsageRecord] | None:
    """The rows a ``tag:...`` or ``user:...`` search term selects; None for any other term."""
    if term.startswith("tag:"):
        return by_tag(queryset, term[4:].strip())
    if term.startswith("user:"):
        return by_end_user(queryset, term[5:].strip())
    return None


LIST_FILTERS: list[Any] = [ProjectFilter, TagFilter, EndUserFilter]
