"""Streaming through gateway + chat vs straight to the provider: added time to first token, added delay
between chunks, and CPU per stream.

A fake provider sends 50 chunks 20 ms apart. The same number of concurrent streams is driven three ways,
one after the other: straight to the provider, to chat alone (with an internal token), and through the
gateway (a real account) to chat. The client is a minimal HTTP/1.1 reader on raw asyncio sockets, so one
Python process can hold 500 streams without becoming the bottleneck it would be with a full HTTP client;
it only timestamps the arrival of ``data:`` events. CPU is read from each server process (user + system)
before and after a round. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import psutil
from parley_common.auth.internal import InternalIdentity, PlanClaims, mint_internal_token
from parley_common.auth.keys import generate_private_key_pem, load_signing_keys
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, venv_command

from bench.context import BenchContext, unlimited_account

STREAMS = 500
WARMUP = 50
CHUNKS = 50
CHUNK_DELAY_MS = 20
ROUND_TIMEOUT = 120.0
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "stream fifty words for the benchmark please"}],
    "stream": True,
}


class StreamTiming:
    __slots__ = ("error", "events", "first", "last", "started")

    def __init__(self) -> None:
        self.started = 0.0
        self.first = 0.0
        self.last = 0.0
        self.events = 0
        self.error: str | None = None


async def _one_stream(port: int, path: str, headers: dict[str, str], body: bytes) -> StreamTiming:
    timing = StreamTiming()
    lines = [
        f"POST {path} HTTP/1.1",
        "host: 127.0.0.1",
        "content-type: application/json",
        "connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + f"\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    timing.started = loop.time()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        timing.error = type(exc).__name__
        return timing
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            timing.error = head.split(b"\r\n", 1)[0].decode(errors="replace")
            return timing
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = loop.time()
            window = tail + data
            count = window.count(b"data: ") - tail.count(b"data: ")
            if count:
                if not timing.events:
                    timing.first = now
                timing.events += count
                timing.last = now
            if b"[DONE]" in window:
                break
            tail = window[-6:]
    except (OSError, asyncio.IncompleteReadError) as exc:
        timing.error = type(exc).__name__
    finally:
        writer.close()
    return timing


def _cpu(processes: list[ManagedProcess]) -> dict[str, float]:
    seconds = {}
    for process in processes:
        times = psutil.Process(process.pid).cpu_times()
        seconds[process.name] = times.user + times.system
    return seconds


async def _settle(processes: list[ManagedProcess], within: float = 60.0) -> None:
    """Wait until the servers are idle: a round's tail (usage records written after the last byte) must not
    be billed to the next round."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = sum(_cpu(processes).values())
        await asyncio.sleep(0.5)
        if sum(_cpu(processes).values()) - before < 0.02:  # under 4 % of one core
            return


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _round(
    port: int, path: str, headers: dict[str, str], count: int, ramp: float = 0.0
) -> list[StreamTiming]:
    """``count`` streams, all at once (``ramp`` 0) or starting evenly over ``ramp`` seconds."""
    body = json.dumps(BODY).encode()

    async def start(i: int) -> StreamTiming:
        if ramp:
            await asyncio.sleep(ramp * i / count)
        return await _one_stream(port, path, headers, body)

    return await asyncio.wait_for(asyncio.gather(*(start(i) for i in range(count))), ROUND_TIMEOUT)


def _summarise(timings: list[StreamTiming]) -> dict[str, Any]:
    good = [t for t in timings if t.error is None and t.events >= CHUNKS]
    ttft = [(t.first - t.started) * 1000 for t in good]
    # Mean gap between chunks of each stream: robust to reads that carry two events at once.
    gaps = [(t.last - t.first) * 1000 / (t.events - 1) for t in good if t.events > 1]
    durations = [(t.last - t.started) * 1000 for t in good]
    errors: dict[str, int] = {}
    for t in timings:
        if t.error is not None or t.events < CHUNKS:
            key = t.error or f"short stream ({t.events} events)"
            errors[key] = errors.get(key, 0) + 1
    return {
        "streams": len(timings),
        "complete": len(good),
        "errors": errors,
        "ttft_ms": {"p50": round(_percentile(ttft, 0.5), 2), "p99": round(_percentile(ttft, 0.99), 2)},
        "inter_chunk_ms": {
            "p50": round(_percentile(gaps, 0.5), 2),
            "p99": round(_percentile(gaps, 0.99), 2),
            "mean": round(statistics.fmean(gaps), 2),
        },
        "stream_ms": {
            "p50": round(_percentile(durations, 0.5), 1),
            "p99": round(_percentile(durations, 0.99), 1),
        },
    }


async def _measure(
    name: str,
    port: int,
    path: str,
    headers: dict[str, str],
    servers: list[ManagedProcess],
    *,
    count: int = STREAMS,
    ramp: float = 0.0,
) -> dict[str, Any]:
    await _settle(servers)
    await _round(port, path, headers, WARMUP)  # connection pools filled, code paths warm
    await _settle(servers)
    before, client_before, wall = _cpu(servers), time.process_time(), time.monotonic()
    timings = await _round(port, path, headers, count, ramp)
    wall = time.monotonic() - wall
    await _settle(servers)  # the CPU of a round includes its tail
    after, client_cpu = _cpu(servers), time.process_time() - client_before
    result = _summarise(timings)
    result["wall_s"] = round(wall, 2)
    result["cpu_ms_per_stream"] = {
        proc: round((after[proc] - before[proc]) * 1000 / count, 2) for proc in after
    } | {"client": round(client_cpu * 1000 / count, 2)}
    print(f"[bench] streaming/{name}: {json.dumps(result)}")
    return result


def _start(ctx: BenchContext) -> tuple[dict[str, ManagedProcess], dict[str, int], str, str]:
    pem = generate_private_key_pem()
    env = {
        **ctx.service_env(load_signing_keys(pem)[0], log_level="INFO"),
        "PARLEY_JWT_PRIVATE_KEYS": pem,
        "PARLEY_DATABASE_POOL_SIZE": "20",
    }
    ports = {"provider": free_port(), "chat": free_port(), "gateway": free_port()}
    spawn = ctx.processes.spawn
    processes = {
        "provider": spawn(
            "provider",
            [
                venv_command("parley-fake-provider"),
                "--port",
                str(ports["provider"]),
                "--chunks",
                str(CHUNKS),
                "--chunk-delay-ms",
                str(CHUNK_DELAY_MS),
            ],
            ready_url=f"http://127.0.0.1:{ports['provider']}/livez",
        ),
        "chat": spawn(
            "chat",
            [venv_command("parley-chat-api")],
            {
                **env,
                "PARLEY_HTTP_PORT": str(ports["chat"]),
                "PARLEY_OPENAI_BASE_URL": f"http://127.0.0.1:{ports['provider']}/v1",
                "PARLEY_OPENAI_API_KEY": "bench",
            },
            ready_url=f"http://127.0.0.1:{ports['chat']}/readyz",
        ),
        "gateway": spawn(
            "gateway",
            [venv_command("parley-gateway-api")],
            {
                **env,
                "PARLEY_HTTP_PORT": str(ports["gateway"]),
                "PARLEY_CHAT_URL": f"http://127.0.0.1:{ports['chat']}",
            },
            ready_url=f"http://127.0.0.1:{ports['gateway']}/readyz",
        ),
    }
    # A real account for the gateway path, with limits that admit every stream of the run.
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    _, access, _ = unlimited_account(gateway, env, ctx.redis_url, ctx.redis_prefix)
    internal = mint_internal_token(
        load_signing_keys(pem)[0],
        InternalIdentity(user_id=uuid.uuid4(), plan=PlanClaims(name="bench")),
        ttl=3600,
    )
    return processes, ports, access, internal


def _added(path: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    return {
        f"{metric}_{q}": round(path[key][q] - direct[key][q], 2)
        for metric, key in (("ttft_ms", "ttft_ms"), ("inter_chunk_ms", "inter_chunk_ms"))
        for q in ("p50", "p99")
    }


async def _bench(ctx: BenchContext) -> dict[str, Any]:
    processes, ports, access, internal = _start(ctx)
    servers = list(processes.values())
    path = "/v1/chat/completions"
    as_chat = {"authorization": f"Bearer {internal}"}
    as_user = {"authorization": f"Bearer {access}"}
    # The required figure: 500 streams that all start at once.
    direct = await _measure("burst/direct", ports["provider"], path, {}, servers)
    chat = await _measure("burst/chat", ports["chat"], path, as_chat, servers)
    gateway = await _measure("burst/gateway", ports["gateway"], path, as_user, servers)
    # The same 500 concurrent streams arriving over one second (steady state, no thundering herd) ...
    ramp_direct = await _measure("ramp/direct", ports["provider"], path, {}, servers, ramp=1.0)
    ramp_gateway = await _measure("ramp/gateway", ports["gateway"], path, as_user, servers, ramp=1.0)
    # ... and 50 streams, where the machine is not saturated: what each hop costs by itself.
    few_direct = await _measure("50/direct", ports["provider"], path, {}, servers, count=50)
    few_gateway = await _measure("50/gateway", ports["gateway"], path, as_user, servers, count=50)

    added = _added(gateway, direct)
    return {
        "summary": {
            "streams": STREAMS,
            "added_ttft_ms_p50": added["ttft_ms_p50"],
            "added_ttft_ms_p99": added["ttft_ms_p99"],
            "added_inter_chunk_ms_p50": added["inter_chunk_ms_p50"],
            "added_inter_chunk_ms_p99": added["inter_chunk_ms_p99"],
            "cpu_ms_per_stream_gateway": gateway["cpu_ms_per_stream"]["gateway"],
            "cpu_ms_per_stream_chat": gateway["cpu_ms_per_stream"]["chat"],
            "incomplete_streams": STREAMS - gateway["complete"],
            "ramp_added_ttft_ms_p50": _added(ramp_gateway, ramp_direct)["ttft_ms_p50"],
            "ramp_added_ttft_ms_p99": _added(ramp_gateway, ramp_direct)["ttft_ms_p99"],
            "50_streams_added_ttft_ms_p50": _added(few_gateway, few_direct)["ttft_ms_p50"],
            "50_streams_added_inter_chunk_ms_p50": _added(few_gateway, few_direct)["inter_chunk_ms_p50"],
        },
        "conditions": {
            "chunks": CHUNKS,
            "chunk_delay_ms": CHUNK_DELAY_MS,
            "concurrency": STREAMS,
            "warmup_streams_per_round": WARMUP,
            "client": "one asyncio process, raw HTTP/1.1 sockets, one connection per stream",
            "machine": "2 cores shared by client, gateway, chat and provider (and whatever else runs)",
        },
        "burst": {
            "direct_to_provider": direct,
            "chat_only": chat,
            "gateway_and_chat": gateway,
            "added_by_chat_only": _added(chat, direct),
            "added_by_gateway_and_chat": added,
        },
        "ramp_over_1s": {
            "direct_to_provider": ramp_direct,
            "gateway_and_chat": ramp_gateway,
            "added": _added(ramp_gateway, ramp_direct),
        },
        "fifty_streams": {
            "direct_to_provider": few_direct,
            "gateway_and_chat": few_gateway,
            "added": _added(few_gateway, few_direct),
        },
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    return asyncio.run(_bench(ctx))
