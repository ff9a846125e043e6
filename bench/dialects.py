"""``bench/run.py``'s dialect phase: the Responses and Messages APIs beside Chat Completions, through one process.

The same question ("Say hello.") to the ``mock`` route (an OpenAI-compatible upstream) as a chat request, as a
Responses request and as an Anthropic Messages request, so both dialects are translated to chat and back. Plain key,
concurrency 16, each shape in turn, twice; then the same three streamed. The CPU per request of each dialect beside
the chat path's is what translation costs. Every answer is a ledger row like any other.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bench.load import averaged

if TYPE_CHECKING:
    from bench.run import Bench, Server

CONCURRENCY, ROUNDS = 16, 2
QUESTION = "Say hello."
BODIES = {
    "chat": {"model": "mock", "messages": [{"role": "user", "content": QUESTION}]},
    "responses": {"model": "mock", "input": QUESTION},
    "messages": {"model": "mock", "max_tokens": 256, "messages": [{"role": "user", "content": QUESTION}]},
}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
SHAPES = tuple(BODIES)


def body(shape: str, *, stream: bool) -> bytes:
    data = dict(BODIES[shape])
    if stream:
        data["stream"] = True
        if shape == "chat":
            data["stream_options"] = {"include_usage": True}
    return json.dumps(data).encode()


def server_for(bench: Bench, shape: str) -> Server:
    """The plain key's server at the shape's path (the chat one is the server itself, counted as such)."""
    if shape == "chat":
        return bench.tollgate
    server = replace(bench.tollgate, name=shape, url=bench.tollgate.url.replace(PATHS["chat"], PATHS[shape]))
    bench.also_tollgate.append(server)
    return server


async def measure(bench: Bench) -> dict[str, object]:
    servers = {shape: server_for(bench, shape) for shape in SHAPES}
    results: dict[str, object] = {"concurrency": CONCURRENCY, "rounds": ROUNDS}
    for stream in (False, True):
        phases: dict[str, list[dict[str, Any]]] = {shape: [] for shape in SHAPES}
        for _ in range(ROUNDS):
            for shape in SHAPES:
                phases[shape].append(await bench.phase(servers[shape], CONCURRENCY, body(shape, stream=stream)))
        results["streamed" if stream else "whole"] = averaged(phases)
    return results


def lines(results: dict[str, Any]) -> list[str]:
    """The table: each dialect's figures beside chat's, whole answers and streams."""
    out = [f"dialects: the same question as chat, Responses and Messages requests to the mock (translated), "
           f"c={results['concurrency']}, each in turn x {results['rounds']}",
           f"  {'':<26}{'chat':>12}{'responses':>14}{'messages':>14}{'resp - chat':>14}{'msg - chat':>14}"]
    for kind in ("whole", "streamed"):
        figures = results[kind]
        for label, name, digits in (("requests/s", "rps", 1), ("p50 latency ms", "p50_ms", 2),
                                    ("CPU ms/request", "cpu_ms_per_request", 3), ("errors", "errors", 0)):
            values = [figures[shape][name] for shape in SHAPES]
            cells = "".join(f"{cell(v, digits):>{12 if i == 0 else 14}}" for i, v in enumerate(values))
            diffs = "".join(f"{difference(values[0], v, digits):>14}" for v in values[1:]) if name != "errors" else ""
            out.append(f"  {kind + ' ' + label:<26}{cells}{diffs}")
    return out


def cell(value: object, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def difference(base: object, value: object, digits: int) -> str:
    if not isinstance(base, (int, float)) or not isinstance(value, (int, float)):
        return ""
    return f"{value - base:+.{digits}f}"
