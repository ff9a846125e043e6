from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services


class Command(BaseCommand):
    help = "Create a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Short unique id, e.g. acme")
        parser.add_argument("--name", help="Display name (defaults to the slug)")
        parser.add_argument("--timezone", default="UTC", help="IANA time zone for budget periods")
        parser.add_argument("--contact-email", action="append", default=[], help="Alert recipient; repeatable")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = services.create_tenant(
                name=options["name"] or options["slug"],
                slug=options["slug"],
                timezone_name=options["timezone"],
                contact_emails=options["contact_email"],
            )
        except ValidationError as e:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in e.message_dict.items())) from None
        self.stdout.write(f"Created tenant {tenant.slug} ({tenant.name}).")
