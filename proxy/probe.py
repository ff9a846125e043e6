"""Test connection: one cheap request to a provider or a deployment, made from the admin for an operator.

A deployment gets a one-token chat completion (an embeddings call when its model is an embedding model); a provider
gets its models list (OpenAI-compatible and Anthropic upstreams have one), or, when it has none, its first
deployment's test. It is an operator's check, not tenant usage: no ledger row, no budget or rate limit, and it does
not count for the circuit breaker. Unlike a client, the operator sees the provider's own error message, with any
echo of the credential masked.

Synchronous (the admin's views are): the request goes through httpx, with the provider's own request builder.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from asgiref.sync import async_to_sync

from . import providers, upstream
from .errors import GatewayError
from .models import Deployment, Provider
from .providers.base import CHAT, EMBEDDINGS, ApiRequest, Target, UpstreamRequest

TIMEOUT = httpx.Timeout(20.0, connect=5.0)
MAX_SHOWN = 300  # characters of a provider's message or answer shown


@dataclass(frozen=True)
class Outcome:
    ok: bool
    summary: str  # one line for the admin message


def target_of(deployment: Deployment) -> Target:
    provider = deployment.provider
    return Target(
        public_model=deployment.route.name, deployment_id=deployment.pk, provider_name=provider.name, kind=provider.kind,
        base_url=provider.resolved_base_url(), upstream_model=deployment.upstream_model, api_key=provider.credential(),
        stream_usage=bool(provider.quirks().get("stream_usage", True)), options=provider.quirks(),
    )


def cheap_request(model: str) -> ApiRequest:
    """The smallest request a model answers: one token of chat, or the embedding of one word."""
    if "embed" in model.lower():
        return ApiRequest(endpoint=EMBEDDINGS, model=model, data={"model": model, "input": "ping"})
    data = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 1}
    return ApiRequest(endpoint=CHAT, model=model, data=data, max_tokens=1)


def check_deployment(deployment: Deployment) -> Outcome:
    """Send the deployment one cheap request; returns what came back, or the exact error."""
    try:
        target = target_of(deployment)
    except ValueError:
        return Outcome(False, "The provider's stored credential cannot be decrypted (was TOLLGATE_KEY_PEPPER changed?).")
    body = cheap_request(deployment.upstream_model)
    provider = providers.get(target.kind)
    if not hasattr(provider, "build_request"):  # the built-in demo model answers in process
        started = time.perf_counter()
        completion = async_to_sync(upstream.complete)(target, body)
        return Outcome(True, f"OK in {_ms(started)} ms from the built-in model: {_words(completion.text)}")
    try:
        request = provider.build_request(target, body)
    except GatewayError as e:
        return Outcome(False, e.message)
    return _send(request, target, lambda data: _answer(provider, target, body, data))


def check_provider(provider: Provider) -> Outcome:
    """List the provider's models, or test its first deployment when it has no models list."""
    first = provider.deployments.select_related("route", "provider").order_by("pk").first()
    if provider.kind not in (Provider.Kind.OPENAI_COMPATIBLE, Provider.Kind.ANTHROPIC):
        if first is None and provider.kind == Provider.Kind.DEMO:
            return Outcome(True, "The built-in demo provider needs no connection; it has no deployment to test.")
        if first is None:  # Azure and Bedrock have no models list to ask: a deployment is what can be tested
            return Outcome(False, "Add a deployment to this provider, then test the connection again.")
        return check_deployment(first)
    try:
        api_key = provider.credential()
    except ValueError:
        return Outcome(False, "The provider's stored credential cannot be decrypted (was TOLLGATE_KEY_PEPPER changed?).")
    base = provider.resolved_base_url().rstrip("/")
    if provider.kind == Provider.Kind.ANTHROPIC:
        url, headers = f"{base}/v1/models", {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    else:
        url, headers = f"{base}/models", {"Authorization": f"Bearer {api_key}"} if api_key else {}
    target = Target(public_model="", deployment_id=0, provider_name=provider.name, kind=provider.kind, base_url=base,
                    upstream_model="", api_key=api_key)
    return _send(UpstreamRequest(url=url, body=b"", headers=headers, method="GET"), target, _models)


def _send(request: UpstreamRequest, target: Target, describe: Any) -> Outcome:
    started = time.perf_counter()
    try:
        response = httpx.request(request.method, request.url, content=request.body or None, headers=request.headers,
                                 timeout=TIMEOUT, follow_redirects=False)
    except httpx.TimeoutException:
        return Outcome(False, f"No answer from {_where(request.url)} within {TIMEOUT.read:g} s.")
    except httpx.HTTPError as e:
        reason = mask(str(e) or type(e).__name__, target.api_key)
        return Outcome(False, f"Could not reach {_where(request.url)}: {type(e).__name__}: {reason}")
    took = _ms(started)
    if response.status_code >= 400:
        return Outcome(False, f"HTTP {response.status_code} from {target.provider_name} in {took} ms: "
                              f"{mask(_message(response.content), target.api_key)}")
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Outcome(False, f"HTTP {response.status_code} in {took} ms, but the answer is not JSON: "
                              f"{mask(_words(response.text), target.api_key)}")
    return Outcome(True, f"OK: HTTP {response.status_code} in {took} ms; {mask(describe(data), target.api_key)}")


def _answer(provider: Any, target: Target, body: ApiRequest, data: dict[str, Any]) -> str:
    model = data.get("model") or target.upstream_model
    if body.endpoint == EMBEDDINGS:
        items = data.get("data") if isinstance(data.get("data"), list) else []
        vector = items[0].get("embedding") if items and isinstance(items[0], dict) else None
        size = f" of {len(vector)} dimensions" if isinstance(vector, list) else ""
        return f"model {model}: {len(items)} embedding{'' if len(items) == 1 else 's'}{size}"
    completion = provider.parse_response(target, body, data)
    return f"model {model}: {_words(completion.text) or '(no text)'}"


def _models(data: dict[str, Any]) -> str:
    items = data.get("data") if isinstance(data.get("data"), list) else None
    if items is None:
        return "the provider answered, without a models list"
    names = [str(item.get("id")) for item in items if isinstance(item, dict) and item.get("id")]
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"{len(items)} model{'' if len(items) == 1 else 's'}: {shown}" if names else f"{len(items)} models"


def _message(content: bytes) -> str:
    """The provider's own error message (OpenAI's and Anthropic's envelopes), else the start of its body."""
    try:
        data = json.loads(content)
    except ValueError:
        return _words(content.decode("utf-8", errors="replace")) or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code") or error.get("type")
        return _words(error["message"]) + (f" ({code})" if isinstance(code, str) and code else "")
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return _words(data["message"])
    return _words(json.dumps(data))


_TOKENS = re.compile(r"[A-Za-z0-9_\-\.]{8,}")


def mask(text: str, secret: str) -> str:
    """``text`` with the credential, and any run of 8 or more of its characters, replaced by ***."""
    if not secret:
        return text
    text = text.replace(secret, "***")
    return _TOKENS.sub(lambda m: "***" if m.group(0) in secret or _shares_a_run(m.group(0), secret) else m.group(0),
                       text)


def _shares_a_run(token: str, secret: str, run: int = 8) -> bool:
    return any(token[i:i + run] in secret for i in range(len(token) - run + 1))


def _words(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _where(url: str) -> str:
    """The URL's scheme, host and port (never a path that could hold a token, nor user info)."""
    parts = httpx.URL(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.host}{port}"


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
