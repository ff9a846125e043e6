from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import pepper, services


class Command(BaseCommand):
    help = "Issue a management API token for a user and print it once. Staff users manage everything; tenant owners their tenants."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="management token")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        try:
            pepper.require_current()  # tokens are digested under the pepper too
        except pepper.PepperMismatch as e:
            raise CommandError(e.message) from None
        token, plaintext = services.issue_management_token(user=user, name=options["name"])
        self.stdout.write(f"{plaintext}\n(shown once; use it as 'Authorization: Bearer <token>' on /api/)")
