from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts import services
from accounts.models import Tenant


class Command(BaseCommand):
    help = "Issue an API key for a tenant and print it once. Tollgate cannot show it again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="Tenant slug")
        parser.add_argument("--name", default="default", help="What the key is for")
        parser.add_argument("--expires-in-days", type=int, help="Expire the key after this many days")
        parser.add_argument("--model", action="append", default=[], help="Restrict the key to this model; repeatable")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['tenant']!r}. Create it with `manage.py createtenant`.")
        days = options["expires_in_days"]
        if days is not None and days < 1:
            raise CommandError("--expires-in-days must be at least 1")
        try:
            key, secret = services.issue_key(
                tenant=tenant,
                name=options["name"],
                expires_at=timezone.now() + timedelta(days=days) if days else None,
                allowed_models=options["model"],
            )
        except ValidationError as e:
            raise CommandError("; ".join(e.messages)) from None
        self.stderr.write(f"Issued {key.masked} for {tenant.slug}. Store it now; it is not shown again.")
        self.stdout.write(secret)
