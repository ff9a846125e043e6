"""The current models each vendor documents, by preset name (OpenAI-compatible vendors) and by kind.

Kept as data, like the presets: a test checks that the bundled price list (billing/data/prices.json) prices every
model named here, so a vendor added without prices fails CI. Names are the ones clients send to that vendor, taken
from its models page as LiteLLM's price map lists them. Presets for servers an operator runs (ollama, vllm, lmstudio,
custom) have no vendor price list and are not here.
"""

from __future__ import annotations

# Presets whose models and prices are the operator's own.
SELF_HOSTED = frozenset({"ollama", "vllm", "lmstudio", "custom"})

DOCUMENTED_MODELS: dict[str, tuple[str, ...]] = {
    # https://platform.openai.com/docs/models
    "openai": (
        "gpt-6-sol", "gpt-6-luna", "gpt-6-astra", "gpt-5.6", "gpt-5.5", "gpt-5.5-pro", "gpt-5.4", "gpt-5.4-pro",
        "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.2", "gpt-5.2-pro", "gpt-5.1", "gpt-5", "gpt-5-mini", "gpt-5-nano",
        "gpt-5-pro", "gpt-5-chat-latest", "gpt-5.3-codex", "gpt-5.2-codex", "gpt-5.1-codex", "gpt-5.1-codex-max",
        "gpt-5.1-codex-mini", "gpt-5-codex", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini",
        "o3", "o3-pro", "o3-mini", "o4-mini", "o1", "o1-pro", "o3-deep-research", "o4-mini-deep-research",
        "gpt-audio", "gpt-audio-mini", "computer-use-preview", "text-embedding-3-small", "text-embedding-3-large",
        "text-embedding-ada-002",
    ),
    # https://docs.anthropic.com/en/docs/about-claude/models/overview
    "anthropic": (
        "claude-opus-5-5", "claude-opus-5", "claude-sonnet-5-5", "claude-sonnet-5", "claude-haiku-5-5",
        "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-7-20260416", "claude-opus-4-6", "claude-opus-4-6-20260205",
        "claude-sonnet-4-6", "claude-opus-4-5", "claude-opus-4-5-20251101", "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-sonnet-4-0",
        "claude-opus-4-0", "claude-3-5-haiku-latest",
    ),
    # https://learn.microsoft.com/en-us/azure/ai-foundry/openai/concepts/models (deployments are named after these)
    "azure": (
        "gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.4-pro", "gpt-5.2", "gpt-5.2-chat", "gpt-5.1",
        "gpt-5.1-chat", "gpt-5.1-codex", "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-chat", "gpt-5-codex", "gpt-5-pro",
        "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini", "gpt-35-turbo", "o3", "o3-pro", "o4-mini",
        "o3-mini", "o1", "codex-mini", "text-embedding-3-large", "text-embedding-3-small", "text-embedding-ada-002",
    ),
    # https://ai.google.dev/gemini-api/docs/models
    "gemini": (
        "gemini-3.8-flash", "gemini-3.7-flash", "gemini-3.6-flash", "gemini-3.5-flash", "gemini-3.5-flash-lite",
        "gemini-3.1-pro-preview", "gemini-3.1-flash-lite", "gemini-3-flash-preview", "gemini-2.5-pro",
        "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-pro-latest", "gemini-flash-latest",
        "gemini-flash-lite-latest", "gemini-embedding-001", "gemini-embedding-2",
    ),
    # https://docs.aws.amazon.com/bedrock/latest/userguide/models-supported.html and .../inference-profiles-support.html
    "bedrock": (
        "anthropic.claude-opus-4-7", "anthropic.claude-sonnet-4-6", "anthropic.claude-opus-4-6-v1",
        "anthropic.claude-opus-4-5-20251101-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-opus-4-1-20250805-v1:0",
        "anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "anthropic.claude-3-5-haiku-20241022-v1:0", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0", "global.anthropic.claude-sonnet-4-6",
        "meta.llama4-maverick-17b-instruct-v1:0", "meta.llama4-scout-17b-instruct-v1:0",
        "meta.llama3-3-70b-instruct-v1:0", "meta.llama3-1-8b-instruct-v1:0", "us.meta.llama3-3-70b-instruct-v1:0",
        "amazon.nova-premier-v1:0", "amazon.nova-pro-v1:0", "amazon.nova-lite-v1:0", "amazon.nova-micro-v1:0",
        "amazon.nova-2-lite-v1:0", "us.amazon.nova-pro-v1:0", "amazon.titan-embed-text-v2:0",
        "mistral.mistral-large-3-675b-instruct", "mistral.mistral-large-2407-v1:0", "mistral.pixtral-large-2502-v1:0",
        "mistral.ministral-3-8b-instruct", "cohere.embed-v4:0", "cohere.embed-english-v3",
        "cohere.embed-multilingual-v3",
    ),
    # https://docs.mistral.ai/getting-started/models/models_overview/
    "mistral": (
        "mistral-large-latest", "mistral-medium-latest", "mistral-small-latest", "magistral-medium-latest",
        "magistral-small-latest", "codestral-latest", "devstral-latest", "devstral-medium-latest",
        "devstral-small-latest", "ministral-14b-latest", "ministral-8b-latest", "ministral-3b-latest",
        "pixtral-large-latest", "open-mistral-nemo", "voxtral-small-latest", "mistral-embed", "codestral-embed",
    ),
    # https://api-docs.deepseek.com/quick_start/pricing
    "deepseek": ("deepseek-chat", "deepseek-reasoner", "deepseek-v4-pro", "deepseek-v4-flash"),
    # https://console.groq.com/docs/models
    "groq": ("openai/gpt-oss-120b", "openai/gpt-oss-20b", "openai/gpt-oss-safeguard-20b", "qwen/qwen3.8-27b"),
    # https://docs.together.ai/docs/serverless-models
    "together": (
        "meta-llama/Llama-3.3-70B-Instruct-Turbo", "meta-llama/Llama-4-Scout-17B-16E-Instruct",
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "deepseek-ai/DeepSeek-V3.1", "deepseek-ai/DeepSeek-R1-0528",
        "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", "Qwen/Qwen3.5-397B-A17B", "Qwen/Qwen2.5-72B-Instruct-Turbo",
        "moonshotai/Kimi-K2.6", "zai-org/GLM-5.1", "openai/gpt-oss-120b", "openai/gpt-oss-20b",
        "mistralai/Mistral-Small-24B-Instruct-2501", "google/gemma-4-31B-it",
    ),
    # https://openrouter.ai/models
    "openrouter": (
        "anthropic/claude-opus-4.7", "anthropic/claude-sonnet-4.6", "anthropic/claude-sonnet-4.5",
        "anthropic/claude-haiku-4.5", "openai/gpt-5.2", "openai/gpt-5", "openai/gpt-5-mini", "openai/gpt-4.1",
        "openai/gpt-4o", "openai/gpt-oss-120b", "google/gemini-3.1-pro-preview", "google/gemini-2.5-pro",
        "google/gemini-2.5-flash", "deepseek/deepseek-v3.2", "deepseek/deepseek-chat", "x-ai/grok-4",
        "moonshotai/kimi-k2.5", "qwen/qwen3-coder", "z-ai/glm-5", "mistralai/mistral-large-2512",
        "minimax/minimax-m2.5",
    ),
}
