"""Management API: usage read-outs, from the rollups or, for a tag or end user, the ledger (GET /api/usage/)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, serializers, viewsets
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import owned_tenants
from accounts.models import ApiKey, Project, Tenant

from . import attributed_usage, export, tags, usage
from .models import UsageRecord, UsageRollup, picos_to_dollars


class UsageQuerySerializer(serializers.Serializer):
    """The query of GET /api/usage/: which days, buckets, groups and rows, and in which format."""

    start = serializers.DateField(required=False, help_text="First UTC day, YYYY-MM-DD. Default: 29 days before end.")
    end = serializers.DateField(required=False, help_text="Last UTC day, included. Default: today (UTC). A range "
                                f"covers at most {usage.REPORT_MAX_DAYS} days.")
    granularity = serializers.ChoiceField(choices=["day", "hour"], default="day", help_text="One row per UTC day or hour.")
    group_by = serializers.CharField(
        required=False, allow_blank=True, max_length=100,
        help_text="Names among tenant, key, project, model, provider, separated by commas (default tenant,key,model); "
                  "empty for one row per day or hour.")
    tenant = serializers.SlugField(required=False, max_length=64, help_text="Only this tenant (its slug).")
    key = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1, help_text="Only this key (its id).")
    project = serializers.CharField(required=False, max_length=64,
                                    help_text="Only this project (its slug, or its id), among your tenants' projects.")
    model = serializers.CharField(required=False, max_length=200, help_text="Only this model (the name clients send).")
    provider = serializers.CharField(required=False, max_length=64, help_text="Only this provider (its name).")
    tag = serializers.CharField(required=False, max_length=tags.MAX_TAG_LENGTH,
                                help_text="Only requests with this tag. Read from the ledger: only days it still holds, "
                                          f"at most {attributed_usage.LEDGER_MAX_DAYS} at a time.")
    user = serializers.CharField(required=False, max_length=tags.MAX_END_USER_LENGTH,
                                 help_text="Only requests of this end user (their `user` field). Read from the ledger, "
                                           "as tag is.")
    format = serializers.ChoiceField(choices=["json", "csv"], default="json",
                                     help_text="json: pages of rows; csv: every row, streamed.")

    def validate_group_by(self, value: str) -> tuple[str, ...]:
        try:
            return usage.parse_groups(value)
        except usage.BadQuery as e:
            raise serializers.ValidationError(e.message) from None

    def validate_tenant(self, value: str) -> Tenant:
        # Another tenant is as unknown as a missing one.
        tenant = owned_tenants(self.context["request"].user).filter(slug=value).first()
        if tenant is None:
            raise serializers.ValidationError("No such tenant among those you manage.")
        return tenant

    def validate_key(self, value: int) -> int:
        if not ApiKey.objects.filter(pk=value, tenant__in=owned_tenants(self.context["request"].user)).exists():
            raise serializers.ValidationError("No such key among your tenants' keys.")
        return value

    def validate_project(self, value: str) -> list[int]:
        mine = Project.objects.filter(tenant__in=owned_tenants(self.context["request"].user))
        by_id = Q(pk=int(value)) if value.isascii() and value.isdigit() and 0 < int(value) < 2**63 else Q()
        ids = list(mine.filter(Q(slug=value) | by_id).values_list("pk", flat=True)) if value else []
        if not ids:  # another tenant's project is as unknown as a missing one
            raise serializers.ValidationError("No such project among your tenants' projects.")
        return ids

    def validate_tag(self, value: str) -> str:
        if not tags.is_tag(value):
            raise serializers.ValidationError("A tag is letters, digits and _ . : = / @ + - characters, such as "
                                              "team:search.")
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            data["days"] = usage.date_range(data.get("start"), data.get("end"), max_days=usage.REPORT_MAX_DAYS,
                                            default_days=usage.REPORT_DEFAULT_DAYS)
        except usage.BadQuery as e:
            raise serializers.ValidationError({e.param: e.message}) from None
        data.setdefault("group_by", usage.DEFAULT_GROUPS)
        return data


class UsageRowSerializer(serializers.Serializer):
    """One bucket of one group. Only the columns of the groups asked for are present."""

    bucket = serializers.DateTimeField(help_text="Start of the UTC day or hour.")
    tenant = serializers.CharField(required=False, help_text="The tenant's slug.")
    key = serializers.IntegerField(required=False, allow_null=True, help_text="The key's id; null for no key.")
    key_prefix = serializers.CharField(required=False, allow_null=True, help_text="The key's public id.")
    project = serializers.CharField(required=False, allow_null=True, help_text="The project's slug; null for none.")
    project_id = serializers.IntegerField(required=False, allow_null=True, help_text="The project's id.")
    model = serializers.CharField(required=False, allow_blank=True)
    provider = serializers.CharField(required=False, allow_blank=True, help_text="Blank: reached no provider.")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Upstream errors, cuts and timeouts.")
    refusals = serializers.IntegerField(help_text="Refused by a budget, a rate limit or validation.")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.CharField(help_text="Exact cost in US dollars, twelve decimals (a decimal string).")
    cost_picos = serializers.IntegerField(help_text="Exact cost in pico-dollars (10^-12 USD).")
    latency_p50_ms = serializers.IntegerField(allow_null=True, help_text="Percentiles are given when the row is one "
                                              "rollup (group by all five): they cannot be added up. Null otherwise.")
    latency_p95_ms = serializers.IntegerField(allow_null=True)
    latency_p99_ms = serializers.IntegerField(allow_null=True)
    ttfb_p50_ms = serializers.IntegerField(allow_null=True, help_text="Time to first byte.")
    ttfb_p95_ms = serializers.IntegerField(allow_null=True)


def usage_columns(groups: tuple[str, ...]) -> list[str]:
    named = {"tenant": ["tenant"], "key": ["key", "key_prefix"], "project": ["project", "project_id"], "model": ["model"],
             "provider": ["provider"]}
    return ["bucket", *(column for name in groups for column in named[name]),
            *(name for name in UsageRowSerializer().fields
              if name not in ("bucket", *usage.GROUPS, "key_prefix", "project_id"))]


def usage_row(row: dict[str, Any], groups: tuple[str, ...]) -> dict[str, Any]:
    """One report row as the API shows it, in JSON and CSV alike."""
    # As DRF writes a UTC time in JSON, so that the CSV says the same.
    out: dict[str, Any] = {"bucket": row["bucket"].astimezone(UTC).isoformat().replace("+00:00", "Z")}
    if "tenant" in groups:
        out["tenant"] = row["tenant__slug"]
    if "key" in groups:
        out["key"], out["key_prefix"] = row["key_id"], row["key__prefix"]
    if "project" in groups:
        out["project"], out["project_id"] = row["project__slug"], row["project_id"]
    for name in ("model", "provider"):
        if name in groups:
            out[name] = row[name]
    single = row["rollups"] == 1
    out.update(requests=row["n"] or 0, errors=row["failed"] or 0, refusals=row["refused"] or 0,
               prompt_tokens=row["prompt"] or 0, completion_tokens=row["completion"] or 0,
               total_tokens=(row["prompt"] or 0) + (row["completion"] or 0),
               cost_usd=str(picos_to_dollars(row["cost"] or 0)), cost_picos=row["cost"] or 0,
               **{name: row[f"max_{name}"] if single else None for name in usage.PERCENTILES})
    return out


class UsageNegotiation(DefaultContentNegotiation):
    """``format`` names json or csv; anything else is a 400 naming the parameter, not DRF's 404."""

    def filter_renderers(self, renderers: list[BaseRenderer], format: str) -> list[BaseRenderer]:
        chosen = [renderer for renderer in renderers if renderer.format == format]
        if not chosen:
            raise exceptions.ValidationError({"format": ["Give json or csv."]})
        return chosen


class CSVRenderer(BaseRenderer):
    """Chooses CSV (``?format=csv`` or ``Accept: text/csv``); the view streams the rows itself."""

    media_type, format, charset = "text/csv", "csv", "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        rows = data if isinstance(data, list) else [data]
        header = list(rows[0]) if rows else []
        return "".join(export.csv_lines(header, ([row[c] for c in header] for row in rows))).encode()


@extend_schema_view(list=extend_schema(
    parameters=[UsageQuerySerializer],
    responses={(200, "application/json"): UsageRowSerializer(many=True),
               (200, "text/csv"): OpenApiResponse(description="Every row, streamed: a header line, then one line per "
                                                  "row with the JSON rows' columns.", response=OpenApiTypes.STR),
               400: OpenApiResponse(response=OpenApiTypes.OBJECT,
                                    description="An invalid parameter, in DRF's envelope: each with its messages.")},
))
class UsageViewSet(viewsets.GenericViewSet):
    """Usage from the rollups, per UTC day or hour and per tenant, key, project, model and provider. Operators see every
    tenant; tenant owners see their own tenants. Rollups are rebuilt from the ledger every few minutes."""

    renderer_classes = [JSONRenderer, CSVRenderer]
    content_negotiation_class = UsageNegotiation
    serializer_class = UsageRowSerializer

    def get_queryset(self) -> QuerySet[UsageRollup]:
        rows = UsageRollup.objects.all()
        user = self.request.user
        return rows if user.is_staff else rows.filter(tenant__in=owned_tenants(user))

    def list(self, request: Request) -> HttpResponseBase:
        query = UsageQuerySerializer(data=request.query_params, context={"request": request})
        query.is_valid(raise_exception=True)
        asked = query.validated_data
        groups = asked["group_by"]
        rows: QuerySet[Any] = self.get_queryset()  # rollups, or ledger rows for a tag or end user
        if "tenant" in asked:
            rows = rows.filter(tenant=asked["tenant"])
        if "tag" in asked or "user" in asked:
            rows = self.attributed(request, asked)
        else:
            rows = usage.report(rows, granularity=asked["granularity"], groups=groups, days=asked["days"],
                                key_id=asked.get("key"), model=asked.get("model"), provider=asked.get("provider"),
                                project_ids=asked.get("project"))
        if request.accepted_renderer.format == "csv":
            columns = usage_columns(groups)
            lines = ([usage_row(row, groups)[c] for c in columns] for row in rows.iterator(chunk_size=export.CHUNK))
            return export.csv_response(request._request, filename="tollgate-usage.csv", header=columns, rows=lines)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response([usage_row(row, groups) for row in page or []])

    def attributed(self, request: Request, asked: dict[str, Any]) -> QuerySet[UsageRecord]:
        """The report of a tag or end user, summed from the ledger rows of the caller's tenants."""
        rows = UsageRecord.objects.all() if request.user.is_staff else UsageRecord.objects.filter(
            tenant__in=owned_tenants(request.user))
        if "tenant" in asked:
            rows = rows.filter(tenant=asked["tenant"])
        try:
            return attributed_usage.report(
                rows, granularity=asked["granularity"], groups=asked["group_by"], days=asked["days"],
                tag=asked.get("tag"), end_user=asked.get("user"), key_id=asked.get("key"), model=asked.get("model"),
                provider=asked.get("provider"), project_ids=asked.get("project"))
        except usage.BadQuery as e:
            raise exceptions.ValidationError({e.param: [e.message]}) from None

    def finalize_response(self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if isinstance(response, Response):
            # What is not the streamed CSV (a page, an error) is JSON, whichever format was asked for.
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)
