"""Azure OpenAI: OpenAI's own request and answer formats, at a URL per deployment, with an `api-key` header.

Chat, completions and embeddings (https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference):
``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21``; the deployment is the
Deployment's upstream model. The Responses API is served by Azure's v1 API only
(https://learn.microsoft.com/en-us/azure/ai-foundry/openai/how-to/responses): ``POST {endpoint}/openai/v1/responses``
with the deployment name as the body's ``model`` and no api-version.

Answers are OpenAI's, so the compatible translator reads them. Azure's first stream chunk carries only content
filter results (empty id, model and choices); it passes through with the client's model name like any other.
"""

from __future__ import annotations

from urllib.parse import quote

from ..errors import GatewayError
from .base import ApiRequest, JSONDict, Target, UpstreamRequest
from .compatible import PATHS, OpenAICompatibleProvider

# The latest generally available data-plane version; it honours stream_options.include_usage (exact stream usage).
DEFAULT_API_VERSION = "2024-10-21"
RESPONSES_PATH = "/responses"


def endpoint(base_url: str) -> str:
    """The resource endpoint, e.g. https://myres.openai.azure.com, also when the operator pasted it with /openai."""
    base = base_url.rstrip("/")
    return base.removesuffix("/openai")


def request_for(target: Target, path: str, payload: JSONDict) -> UpstreamRequest:
    """The request for an OpenAI path ("/chat/completions", "/responses", ...) at the target's deployment."""
    headers = {"api-key": target.api_key} if target.api_key else {}
    base = endpoint(target.base_url)
    if path == RESPONSES_PATH or path.startswith(RESPONSES_PATH + "/"):
        # The v1 API names the deployment in the body, not the URL.
        return UpstreamRequest.post_json(f"{base}/openai/v1{path}", {**payload, "model": target.upstream_model},
                                         headers)
    version = str(target.options.get("api_version") or DEFAULT_API_VERSION)
    deployment = quote(target.upstream_model, safe="")
    url = f"{base}/openai/deployments/{deployment}{path}?api-version={quote(version, safe='')}"
    return UpstreamRequest.post_json(url, payload, headers)


class AzureOpenAIProvider(OpenAICompatibleProvider):
    name = "azure"

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the request at the deployment's URL. Raises GatewayError for an endpoint Azure has no path for."""
        if body.endpoint not in PATHS:
            raise GatewayError(f"{body.endpoint} is not supported by this provider", code="unsupported_endpoint")
        return request_for(target, PATHS[body.endpoint], self.payload(target, body))
