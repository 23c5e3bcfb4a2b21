"""EventStreamResponse over real HTTP: a client leaving stops the stream at once and ends the request
normally; a stream that runs to its end is delivered whole and cleaned up once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.responses import EventStreamResponse, LastChunk
from parley_common.testing.net import free_port
from starlette.background import BackgroundTask

# What happened to each stream, by name: "cleaned" once its generator's finally block ran, then
# "background" once the response's background task ran.
events: dict[str, list[str]] = {}
releases: dict[str, asyncio.Event] = {}


def make_app() -> FastAPI:
    app = create_service_app(service="sse-test")

    async def body(name: str, stall: bool) -> AsyncIterator[bytes]:
        events[name] = []
        try:
            yield b"data: first\n\n"
            if stall:
                await asyncio.Event().wait()  # an upstream that never sends again
            yield b"data: second\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            events[name].append("cleaned")

    async def ending(name: str) -> AsyncIterator[bytes]:
        events[name] = []
        releases[name] = asyncio.Event()
        try:
            yield b"data: first\n\n"
            yield LastChunk(b"data: [DONE]\n\n")
            await releases[name].wait()  # an upstream that ends its own reply only later
            events[name].append("drained")
            yield b"data: never sent\n\n"
        finally:
            events[name].append("cleaned")

    @app.get("/ending/{name}")
    async def ending_stream(name: str) -> EventStreamResponse:
        return EventStreamResponse(ending(name))

    @app.post("/release/{name}")
    async def release(name: str) -> dict[str, str]:
        releases[name].set()
        return {}

    @app.get("/stream/{name}")
    async def stream(name: str, stall: bool = False) -> EventStreamResponse:
        response = EventStreamResponse(body(name, stall), headers={"x-stream": name})
        response.background = BackgroundTask(lambda: events[name].append("background"))
        return response

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(make_app(), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def wait_for(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def requests_counted(url: str, route: str, status: int) -> float:
    prefix = (
        f'parley_http_requests_total{{method="GET",route="{route}",service="sse-test",status="{status}"}} '
    )
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def test_a_whole_stream_arrives_and_its_generator_is_cleaned_up_once(server: str) -> None:
    response = httpx.get(server + "/stream/whole")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-stream"] == "whole"
    assert response.text == "data: first\n\ndata: second\n\ndata: [DONE]\n\n"
    wait_for(lambda: events.get("whole") == ["cleaned", "background"])


def test_a_client_leaving_mid_stream_stops_the_generator_at_once(server: str) -> None:
    before = requests_counted(server, "/stream/{name}", 200)
    with httpx.stream("GET", server + "/stream/cut", params={"stall": "true"}) as response:
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        assert events["cut"] == []  # the generator is now waiting on its stalled upstream
    # The generator never yields again, so only the disconnect can end it.
    wait_for(lambda: events["cut"] == ["cleaned", "background"], timeout=2.0)
    # The request ended normally (not an error, not a cancelled task) and was counted once.
    wait_for(lambda: requests_counted(server, "/stream/{name}", 200) == before + 1)
    assert requests_counted(server, "/stream/{name}", 500) == 0
    # The server still serves.
    assert httpx.get(server + "/stream/after").text.endswith("data: [DONE]\n\n")


def test_a_last_chunk_completes_the_response_at_once_and_the_body_still_runs_to_its_end(server: str) -> None:
    response = httpx.get(server + "/ending/last", timeout=10)  # the body cannot end before /release
    assert response.text == "data: first\n\ndata: [DONE]\n\n"
    assert events["last"] == []
    # The client has left by now; the body's end still runs, uncut, and nothing after it was sent.
    httpx.post(server + "/release/last")
    wait_for(lambda: events["last"] == ["drained", "cleaned"])
