"""ASGI entry point. /v1 is served here, never over WSGI: streaming needs an event loop."""

from __future__ import annotations

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

# Build the Django app before importing anything that touches models.
django_application = get_asgi_application()

application = ProtocolTypeRouter({"http": django_application})
