from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import pepper
from accounts.models import ApiKey, ManagementToken


class Command(BaseCommand):
    help = (
        "After changing TOLLGATE_KEY_PEPPER on purpose: issue keys under the new pepper from now on. Every API key "
        "and management token of the old pepper is revoked (none of them can work any more); issue new ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--yes", action="store_true", help="Revoke every active key and token; without it, only say how many")

    def handle(self, *args: Any, **options: Any) -> None:
        mine = pepper.fingerprint()
        if pepper.recorded() == mine:
            raise CommandError(f"Keys are already issued under this pepper ({mine[:pepper.SHOWN]}); nothing to rotate. "
                               "Set the new TOLLGATE_KEY_PEPPER first.")
        keys = ApiKey.objects.filter(revoked_at__isnull=True).count()
        tokens = ManagementToken.objects.filter(revoked_at__isnull=True).count()
        if not options["yes"]:
            raise CommandError(f"This revokes {keys} active API keys and {tokens} management tokens, which the old pepper "
                               "signed. Run it again with --yes to do it.")
        keys, tokens = pepper.rotate()
        self.stdout.write(f"Keys are now issued under pepper {mine[:pepper.SHOWN]}. Revoked {keys} API keys and "
                          f"{tokens} management tokens: issue new ones (admin, tenant pages, issuekey, issuetoken).")
