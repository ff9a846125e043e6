"""Provider registry: kind -> dotted path, imported on first use and then cached."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.utils.module_loading import import_string

KINDS = {
    "openai_compatible": "proxy.providers.compatible.OpenAICompatibleProvider",
    "anthropic": "proxy.providers.anthropic.AnthropicProvider",
    "azure": "proxy.providers.azure.AzureOpenAIProvider",
    "bedrock": "proxy.providers.bedrock.BedrockProvider",
    "demo": "proxy.providers.demo.DemoProvider",
}


@cache
def get(kind: str) -> Any:
    """Return the provider instance for a kind. Raises KeyError for an unknown kind."""
    return import_string(KINDS[kind])()
