"""Projects inside a tenant: services, and the Projects page where owners create them and move keys between them.

A key belongs to at most one project of its own tenant; its /v1 requests' ledger rows name that project, and the
rollups, the usage API and the pages group by it. A key's project travels in its cached lookup, so changing it
drops that cache entry and the next request is already counted to the new project.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import keys
from .models import ApiKey, Project, Tenant
from .tenancy import tenant_page

logger = logging.getLogger(__name__)


def members_of(tenant: Tenant) -> QuerySet[Any]:
    return get_user_model().objects.filter(memberships__tenant=tenant).order_by("username").distinct()


def check_owners(*, tenant: Tenant, owners: Iterable[AbstractBaseUser]) -> list[AbstractBaseUser]:
    """Return the owners as a list. Raises ValidationError if one of them is not a member of the tenant."""
    owners = list(owners)
    members = set(members_of(tenant).filter(pk__in=[o.pk for o in owners]).values_list("pk", flat=True))
    outside = [str(owner) for owner in owners if owner.pk not in members]
    if outside:
        raise ValidationError({"owners": f"{', '.join(outside)}: not a member of {tenant.name}. A project's owners "
                                         "must be members of its tenant."})
    return owners


def drop_owner(*, tenant_id: int, user_id: int) -> None:
    """Remove the user from the owners of the tenant's projects: owners are members, and this one left."""
    for project in Project.objects.filter(tenant_id=tenant_id, owners=user_id):
        project.owners.remove(user_id)  # through the relation: its signal puts the change in the audit log


@transaction.atomic
def create_project(*, tenant: Tenant, name: str, slug: str, owners: Iterable[AbstractBaseUser] = ()) -> Project:
    """Create and return a project of the tenant. Raises ValidationError on bad fields, a taken slug or an owner
    who is not a member of the tenant."""
    owners = check_owners(tenant=tenant, owners=owners)
    project = Project(tenant=tenant, name=name, slug=slug)
    project.full_clean()
    project.save()
    project.owners.set(owners)
    logger.info("project created: tenant=%s slug=%s", tenant.slug, slug)
    return project


@transaction.atomic
def update_project(*, project: Project, name: str | None = None, slug: str | None = None,
                   owners: Iterable[AbstractBaseUser] | None = None) -> Project:
    """Rename the project, change its slug or replace its owners (what is None stays). Raises ValidationError."""
    if owners is not None:
        owners = check_owners(tenant=project.tenant, owners=owners)
    if name is not None:
        project.name = name
    if slug is not None:
        project.slug = slug
    project.full_clean()
    project.save()
    if owners is not None:
        project.owners.set(owners)
    return project


def delete_project(*, project: Project) -> None:
    """Delete the project; its keys then belong to none, and their cached lookups are dropped (a cached record naming
    the deleted project would write ledger rows pointing nowhere). Raises ProtectedError while ledger rows name it."""
    prefixes = list(project.api_keys.values_list("prefix", flat=True))
    project.delete()
    keys.forget_many(prefixes)
    logger.info("project deleted: tenant=%s slug=%s", project.tenant_id, project.slug)


def check_key_project(*, tenant: Tenant | int, project: Project | None) -> None:
    """Raise ValidationError unless the project is None or one of the tenant's."""
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    if project is not None and project.tenant_id != tenant_id:
        raise ValidationError({"project": "The project must be one of the key's tenant's projects."})


def set_key_project(*, key: ApiKey, project: Project | None) -> ApiKey:
    """Put the key in the project (None: in none) and drop its cached lookup, so /v1 counts its next request to
    the new project. Raises ValidationError for another tenant's project."""
    check_key_project(tenant=key.tenant_id, project=project)
    key.project = project
    key.save(update_fields=["project"])  # a save, not an UPDATE, so the change is audited like any other
    keys.forget(key.prefix)
    logger.info("api key %s moved to project %s", key.prefix, project.slug if project else "(none)")
    return key


def month_spend(tenant: Tenant) -> dict[int | None, int]:
    """This UTC month's cost in pico-dollars per project id (None: keys in no project), from the ledger, and from
    the day rollups for days already pruned from it."""
    from billing import rollups, usage
    from billing.models import UsageRecord, UsageRollup

    days = usage.month_so_far()
    pruned = rollups.pruned_before()
    split = days.starts_at if pruned is None else min(max(pruned, days.starts_at), days.ends_at)
    spend: dict[int | None, int] = {}
    ledger = UsageRecord.objects.filter(tenant=tenant, created_at__gte=split, created_at__lt=days.ends_at)
    rolled = UsageRollup.objects.filter(tenant=tenant, granularity=UsageRollup.Granularity.DAY,
                                        bucket__gte=days.starts_at, bucket__lt=split)
    for rows in (ledger, rolled):
        for row in rows.values("project_id").annotate(cost=Sum("cost_picos")).order_by():
            spend[row["project_id"]] = spend.get(row["project_id"], 0) + int(row["cost"] or 0)
    return spend


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=64, help_text="Unique within your tenant; names the project in the API.")
    owners = forms.ModelMultipleChoiceField(queryset=get_user_model().objects.none(), required=False,
                                            widget=forms.CheckboxSelectMultiple,
                                            help_text="Members answerable for the project's keys and spend.")

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["owners"].queryset = members_of(tenant)  # type: ignore[attr-defined]


def save_form(request: HttpRequest, form: ProjectForm, project: Project | None) -> Project | None:
    """Create or update from a valid form; a refusal becomes a form error and None."""
    data = form.cleaned_data
    try:
        if project is None:
            return create_project(tenant=request.tenant, name=data["name"], slug=data["slug"],  # type: ignore[attr-defined]
                                  owners=data["owners"])
        return update_project(project=project, name=data["name"], slug=data["slug"], owners=data["owners"])
    except ValidationError as e:
        form.add_error(None, e)
        return None


@tenant_page()
def project_list(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    form = ProjectForm(request.POST or None, tenant=tenant)
    if request.method == "POST":
        if not request.is_owner:  # type: ignore[attr-defined]
            return render(request, "pages/owners_only.html", status=403)
        if form.is_valid() and (project := save_form(request, form, None)):
            messages.success(request, f"Project {project.name} created. Put keys in it from the Keys page.")
            return redirect("projects")
    from billing.admin import cost

    spend = month_spend(tenant)
    projects = Project.objects.filter(tenant=tenant).prefetch_related("owners", "api_keys").order_by("name")
    rows = [{"project": p, "owners": sorted(str(o) for o in p.owners.all()), "cost": cost(spend.get(p.pk, 0)),
             "keys": sorted(p.api_keys.all(), key=lambda k: k.name)} for p in projects]
    return render(request, "pages/projects.html", {"title": "Projects", "rows": rows, "form": form,
                                                   "unassigned": cost(spend.get(None, 0))},
                  status=400 if request.method == "POST" else 200)


@tenant_page(owner=True)
def project_edit(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project.objects.filter(tenant=request.tenant), pk=project_id)  # type: ignore[attr-defined]
    initial = {"name": project.name, "slug": project.slug, "owners": list(project.owners.all())}
    form = ProjectForm(request.POST or None, tenant=project.tenant, initial=initial)
    if request.method == "POST" and form.is_valid() and save_form(request, form, project):
        messages.success(request, f"Project {project.name} saved.")
        return redirect("projects")
    context = {"title": f"Project {project.name}", "form": form, "back_to": "projects"}
    return render(request, "pages/form.html", context, status=400 if request.method == "POST" else 200)


@tenant_page(owner=True)
@require_POST
def move_key(request: HttpRequest, key_id: int) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    key = get_object_or_404(ApiKey.objects.for_tenant(tenant), pk=key_id)
    chosen = request.POST.get("project", "")
    valid = chosen.isascii() and chosen.isdigit() and len(chosen) < 19  # a bigint, not a 500
    if chosen and not valid:
        messages.error(request, "Choose one of the tenant's projects.")
        return redirect("keys")
    # Another tenant's project is as unknown as a missing one.
    project = get_object_or_404(Project.objects.filter(tenant=tenant), pk=int(chosen)) if chosen else None
    set_key_project(key=key, project=project)
    where = f"project {project.name}" if project else "no project"
    messages.success(request, f"{key.name} ({key.masked}) is now in {where}; its next requests count there.")
    return redirect("keys")
