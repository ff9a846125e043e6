from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import pepper, services
from accounts.models import ApiKey, Membership, Tenant
from billing.management.commands.loadprices import BUNDLED, read_prices, save_prices
from billing.models import Price
from gateway_site import changes
from proxy.services import ensure_demo_route

DEMO_SLUG = "demo"
DEMO_KEY_NAME = "demo key"

SNIPPET = """\
    pip install openai

    from openai import OpenAI
    client = OpenAI(base_url="{base_url}/v1", api_key="{secret}")
    stream = client.chat.completions.create(
        model="demo", messages=[{{"role": "user", "content": "Hello!"}}], stream=True)
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
"""


class Command(BaseCommand):
    help = (
        "Make sure the demo tenant, an admin user and one demo key exist; print the admin URL, the key and an "
        "SDK snippet. The previous demo key is rotated, because a key can only be shown when it is issued."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        base_url = options["base_url"].rstrip("/")
        try:
            # First, before any row is written: under another pepper than the keys', the demo key would not work.
            pepper.require_current()
        except pepper.PepperMismatch as e:
            raise CommandError(e.message) from None
        tenant = Tenant.objects.filter(slug=DEMO_SLUG).first() or services.create_tenant(name="Demo", slug=DEMO_SLUG)
        admin_line = self.ensure_admin(tenant)
        ensure_demo_route()
        current = ApiKey.objects.for_tenant(tenant).active().filter(name=DEMO_KEY_NAME).first()
        if current is None:
            key, secret = services.issue_key(tenant=tenant, name=DEMO_KEY_NAME)
        else:
            key, secret = services.rotate_key(key=current)
        prices_line = self.ensure_prices()
        self.stdout.write(f"Admin:    {base_url}/admin/  ({admin_line})")
        self.stdout.write(f"Pages:    {base_url}/  (the demo tenant's dashboard, keys, budgets and playground; same user)")
        self.stdout.write(f"Prices:   {prices_line}")
        self.stdout.write(f"Emails:   {email_line()}")
        self.stdout.write("Commands: ./tollgate manage <command>, e.g. ./tollgate manage issuekey demo  (see the README)")
        self.stdout.write(f"Demo key: {secret}  (tenant {tenant.slug}; rotated at every start)")
        self.stdout.write("Try it with the OpenAI SDK:\n" + SNIPPET.format(base_url=base_url, secret=secret))

    def ensure_prices(self) -> str:
        # Only into an empty price table: a price the operator deleted or changed stays as they left it.
        if Price.objects.exists():
            return f"{Price.objects.count()} rows; edit them in the admin or run `manage.py loadprices`"
        outcome = save_prices(read_prices(BUNDLED), update=False)
        changes.announce("prices")  # bulk writes send no signals
        return f"loaded {len(outcome.created)} bundled prices; edit them in the admin"

    def ensure_admin(self, tenant: Tenant) -> str:
        User = get_user_model()
        admin = User.objects.filter(is_superuser=True).order_by("pk").first()
        if admin is not None:
            return f"user {admin.get_username()}; reset with `manage.py changepassword {admin.get_username()}`"
        password = secrets.token_urlsafe(12)
        admin = User.objects.create_superuser("admin", "admin@localhost", password)
        services.add_member(tenant=tenant, user=admin, role=Membership.Role.OWNER)
        return f"user admin, password {password} — shown this once"


def email_line() -> str:
    """Where alert and password-reset emails go, for the operator."""
    if settings.EMAIL_BACKEND == "gateway_site.mail.OutboxBackend":
        return (f"written to {settings.EMAIL_FILE_PATH}/, one .eml file each, readable only by you "
                "(set EMAIL_HOST to send them)")
    if settings.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend":
        return f"sent through {settings.EMAIL_HOST}:{settings.EMAIL_PORT}"
    return f"handled by {settings.EMAIL_BACKEND}"
