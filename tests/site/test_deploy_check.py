"""Production security settings: `manage.py check --deploy` passes with a production-like environment (CI runs this
file), HTTPS settings come from variables, and every page Django serves carries the Content-Security-Policy."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from gateway_site.security import STYLE_ELEMENT, policy, source_hash
from gateway_site.settings import BASE_DIR

# What a deployment behind a proxy terminating HTTPS sets (README, Configuration and Production).
PRODUCTION = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "TOLLGATE_KEY_PEPPER": secrets.token_urlsafe(32),
    "DJANGO_ALLOWED_HOSTS": "gw.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://gw.example.com",
    "TOLLGATE_PUBLIC_URL": "https://gw.example.com",
    "DJANGO_SECURE_COOKIES": "1",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
}
INLINE_SCRIPT = re.compile(r'<script(?![^>]*\b(?:src=|type="application/json"))[^>]*>')
HTTPS_VARIABLES = ("DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SECURE_HSTS_SECONDS", "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
                   "DJANGO_SECURE_HSTS_PRELOAD")


def deploy_check(env: dict[str, str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`manage.py check --deploy --fail-level WARNING` on the real settings, in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "gateway_site.settings", "TOLLGATE_DATA_DIR": str(data_dir), **env})
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return subprocess.run(command, cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=120)


def test_the_deploy_check_passes_with_production_settings(tmp_path: Path) -> None:
    result = deploy_check(PRODUCTION, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_the_https_variables_the_deploy_check_names_hsts_and_the_ssl_redirect(tmp_path: Path) -> None:
    env = {name: value for name, value in PRODUCTION.items() if name not in HTTPS_VARIABLES}
    result = deploy_check(env, tmp_path)
    assert result.returncode != 0
    found = set(re.findall(r"security\.W\d+", result.stderr))
    assert found == {"security.W004", "security.W008"}, result.stderr


@pytest.mark.django_db
def test_https_redirect_and_hsts_follow_the_proxy_header(client: Client, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    plain = client.get("/login/")
    assert plain.status_code == 301 and plain["Location"] == "https://testserver/login/"
    proxied = client.get("/login/", headers={"X-Forwarded-Proto": "https"})
    assert proxied.status_code == 200 and proxied["Strict-Transport-Security"] == "max-age=3600"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/password/reset/", "/admin/login/", "/api/docs/", "/does-not-exist/"])
def test_pages_and_the_admin_carry_the_content_security_policy(client: Client, path: str) -> None:
    response = client.get(path)
    assert response["Content-Security-Policy"] == policy()


def test_the_policy_allows_no_inline_or_foreign_script() -> None:
    directives = dict(part.split(" ", 1) for part in policy().split("; "))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in directives["style-src"]  # only style attributes are allowed inline


def test_our_templates_have_no_inline_script_or_style_element() -> None:
    for template in (BASE_DIR / "templates").rglob("*.html"):
        if "email" in template.parts:
            continue  # emails are read in mail clients, not served under the policy
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template
        assert "<style" not in text, template
        assert not re.search(r"\son[a-z]+=", text), template  # event handler attributes are inline scripts


@pytest.mark.django_db
def test_the_admin_and_the_api_inline_no_script_and_only_hashed_styles(admin_client: Client) -> None:
    urls = [reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}")
            for model in admin.site._registry for view in ("changelist", "add")]
    found = []
    for url in [*urls, "/api/", "/api/tenants/"]:
        page = admin_client.get(url, headers={"Accept": "text/html"}).content.decode()
        assert not INLINE_SCRIPT.search(page), url
        found += [(url, source_hash(text)) for text in STYLE_ELEMENT.findall(page)]
    assert found  # changelists without actions; the browsable API's highlighting when Pygments is installed
    assert [(url, digest) for url, digest in found if digest not in policy()] == []


@pytest.mark.django_db
def test_the_api_docs_page_passes_the_policy(admin_client: Client) -> None:
    page = admin_client.get("/api/docs/").content.decode()
    assert not INLINE_SCRIPT.search(page)
    assert [text for text in STYLE_ELEMENT.findall(page) if source_hash(text) not in policy()] == []
