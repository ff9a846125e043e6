"""The Content-Security-Policy of every page Django serves: the tenant pages, the admin, the API's pages.

Django 5.2 has no CSP of its own, and one fixed policy needs no package. Scripts, style sheets, images and
connections come only from our own origin, so injected markup can neither run a script nor send data elsewhere.
Two allowances, each for markup we do not write:
- style attributes (``style-src-attr``): the admin's templates use them, and an attribute cannot load anything
  that img-src and font-src refuse;
- the constant ``<style>`` elements of Django's admin change list, drf-spectacular's Swagger UI page and DRF's
  browsable API (its code highlighting, when Pygments is installed), each by the hash of its text, read from the
  installed package so that an upgrade is followed.
tests/browser/test_csp.py visits the pages and the admin in chromium and fails on any violation.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re

from django.http import HttpRequest, HttpResponseBase
from django.template.loader import get_template
from django.utils.deprecation import MiddlewareMixin
from rest_framework.compat import pygments_css
from rest_framework.renderers import BrowsableAPIRenderer

STYLE_ELEMENT = re.compile(r"<style>(.*?)</style>", re.DOTALL)
STYLED_TEMPLATES = ("admin/change_list.html", "drf_spectacular/swagger_ui.html")


def source_hash(text: str) -> str:
    """The CSP source that allows exactly this inline text."""
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def third_party_styles() -> list[str]:
    """The text of each <style> element that Django's admin, drf-spectacular and DRF render."""
    texts = [text for name in STYLED_TEMPLATES for text in STYLE_ELEMENT.findall(get_template(name).template.source)]
    code_style = pygments_css(BrowsableAPIRenderer.code_style)  # None without Pygments
    return [text for text in texts if "{{" not in text and "{%" not in text] + ([code_style] if code_style else [])


@functools.cache
def policy() -> str:
    styles = " ".join(source_hash(text) for text in third_party_styles())
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        f"style-src 'self' {styles}",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",  # the playground's fetch and the live page's WebSocket (same host)
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Add the policy to every response that does not set its own."""

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", policy())
        return response
