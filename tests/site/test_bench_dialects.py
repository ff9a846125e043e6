from __future__ import annotations

import json

from bench import dialects


def figures(cpu: float, errors: int = 0) -> dict[str, object]:
    return {"rps": 500.0, "p50_ms": 20.0, "p99_ms": 40.0, "cpu_ms_per_request": cpu, "overhead_p50_ms": 1.0,
            "errors": errors}


def test_every_shape_asks_the_same_question_of_the_same_route() -> None:
    for stream in (False, True):
        bodies = {shape: json.loads(dialects.body(shape, stream=stream)) for shape in dialects.SHAPES}
        assert {body["model"] for body in bodies.values()} == {"mock"}
        assert bodies["chat"]["messages"][0]["content"] == bodies["responses"]["input"] == dialects.QUESTION
        assert bodies["messages"]["messages"][0]["content"] == dialects.QUESTION
        assert all(body.get("stream", False) is stream for body in bodies.values())
    assert json.loads(dialects.body("chat", stream=True))["stream_options"] == {"include_usage": True}


def test_the_table_shows_each_dialects_cpu_beside_chats() -> None:
    results = {"concurrency": 16, "rounds": 2,
               "whole": {"chat": figures(1.5), "responses": figures(1.62), "messages": figures(1.71)},
               "streamed": {"chat": figures(2.0), "responses": figures(2.4), "messages": figures(2.25, errors=1)}}
    text = "\n".join(dialects.lines(results))
    cpu_whole = next(line for line in text.splitlines() if "whole CPU ms/request" in line)
    assert cpu_whole.split()[-5:] == ["1.500", "1.620", "1.710", "+0.120", "+0.210"]
    cpu_streamed = next(line for line in text.splitlines() if "streamed CPU ms/request" in line)
    assert cpu_streamed.split()[-2:] == ["+0.400", "+0.250"]
    errors = next(line for line in text.splitlines() if "streamed errors" in line)
    assert errors.split()[-3:] == ["0", "0", "1"]
