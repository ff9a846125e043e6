from __future__ import annotations

import asyncio

from bench import mock_upstream
from proxy import upstream
from proxy.providers import http
from proxy.providers.base import ApiRequest, Target


def test_streams_and_completions_reuse_one_upstream_connection(mock_upstream_url: str) -> None:
    # A response read only up to [DONE] would be closed instead of pooled: a new TCP (and, with a real
    # provider, TLS) handshake for every stream.
    target = Target(public_model="m", deployment_id=1, provider_name="p", kind="openai_compatible",
                    base_url=f"{mock_upstream_url}/v1", upstream_model="mock")
    messages = [{"role": "user", "content": "hi"}]
    stream = ApiRequest(endpoint="chat", model="m", data={"model": "m", "messages": messages, "stream": True}, stream=True)
    once = ApiRequest(endpoint="chat", model="m", data={"model": "m", "messages": messages})

    async def three_streams_and_a_completion() -> tuple[int, int]:
        before = len(mock_upstream.peers)
        for _ in range(3):
            opened = await upstream.open_stream(target, stream)
            assert [chunk async for chunk in opened][-1].usage is not None
            await opened.aclose()
        await upstream.complete(target, once)
        await http.session().close()
        mine = mock_upstream.peers[before:]
        return len(set(mine)), len(mine)

    assert asyncio.run(three_streams_and_a_completion()) == (1, 4)  # one connection, four requests on it
