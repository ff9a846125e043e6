"""Where a tenant's alert webhook may point: public addresses only, unless TOLLGATE_WEBHOOK_ALLOW_PRIVATE is on.

Otherwise whoever edits a tenant could have the gateway POST into its own network: the host itself (127.0.0.1,
[::1], localhost), the cloud metadata service (169.254.169.254), databases and admin consoles on private ranges.
The URL is checked when it is saved (address literals and localhost; a name can resolve elsewhere tomorrow), and
again when an alert is sent: then names are resolved, every address they resolve to must be public, and the
connection goes to one of those very addresses, so a name cannot answer a public address to the check and a
private one to the connection. Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits; the gateway of such a network connects to it.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
ALLOW_HINT = "webhooks go only to public addresses (TOLLGATE_WEBHOOK_ALLOW_PRIVATE=1 allows others)"


class WebhookRefused(Exception):
    """The webhook's URL or address is not one that alerts may be sent to."""


def refusal(address: IPAddress) -> str | None:
    """Why alerts may not go to this address ("a loopback address", ...), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped)
        if address in NAT64:
            return refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:  # private ranges, 0.0.0.0, shared (100.64/10), reserved and documentation ranges
        return "a private address"
    return None


def allows_private() -> bool:
    return bool(settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE)


def check_url(url: str) -> None:
    """Refuse a URL that is not http(s) or whose host is a non-public address or localhost. Raises WebhookRefused.

    Names are not resolved here: that happens for each connection (see ``client``).
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        raise WebhookRefused("The webhook URL is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("A webhook URL starts with http:// or https://")
    if not host:
        raise WebhookRefused("The webhook URL has no host")
    if allows_private():
        return
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always the loopback interface
        raise WebhookRefused(f"{host} is a loopback address; {ALLOW_HINT}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    reason = refusal(address)
    if reason:
        raise WebhookRefused(f"{address} is {reason}; {ALLOW_HINT}")


def validate_webhook_url(value: str) -> None:
    """Validator of Tenant.alert_webhook_url (admin, management API)."""
    try:
        check_url(value)
    except WebhookRefused as e:
        raise ValidationError(f"{e}.", code="webhook_address") from None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, as the connection would look it up. Raises OSError."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in found))


def public_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses to connect to for ``host``. Raises WebhookRefused if any of them is not public."""
    try:
        addresses = resolve(host, port)
    except OSError as e:
        raise httpcore.ConnectError(f"the webhook's host does not resolve: {e.strerror or e}") from None
    if not addresses:
        raise httpcore.ConnectError("the webhook's host resolves to no address")
    for address in addresses:
        reason = refusal(address)
        if reason:
            # Any one private answer refuses the name: round-robin DNS could hand it to the next connection.
            raise WebhookRefused(f"the webhook's host resolves to {address}, {reason}; {ALLOW_HINT}")
    return addresses


class PublicOnlyBackend(httpcore.SyncBackend):
    """httpcore's socket layer, connecting only to checked public addresses of the requested host.

    TLS still verifies the certificate against the host name: httpcore starts TLS with the URL's host.
    """

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if allows_private():
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        *others, last = public_addresses(host, port)
        for address in others:
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue  # as socket.create_connection does: the next address may answer
        return super().connect_tcp(str(last), port, timeout, local_address, socket_options)


def client(*, timeout: float) -> httpx.Client:
    """An httpx client whose every connection goes through PublicOnlyBackend.

    Proxies from the environment are ignored: through a proxy the address checked would be the proxy's.
    """
    transport = httpx.HTTPTransport()
    # httpx takes no network backend, so its connection pool is replaced by one with ours (httpx is pinned;
    # tests/accounts/test_webhooks.py posts through this client to a real socket).
    transport._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=PublicOnlyBackend())
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)


def post(
    url: str, *, content: bytes, headers: dict[str, str], timeout: float, http: httpx.Client | None = None
) -> httpx.Response:
    """POST to a webhook, never following a redirect. Raises WebhookRefused, or httpx's errors.

    ``http`` replaces the guarded client (tests); the URL is checked all the same.
    """
    check_url(url)
    with http or client(timeout=timeout) as session:
        response = session.post(url, content=content, headers=headers, follow_redirects=False)
    if response.is_redirect:
        # A redirected POST turns into a GET on 301/302/303, and its target would need checking: set the final URL.
        raise WebhookRefused(f"the webhook answered {response.status_code}, a redirect, which is not followed")
    return response
