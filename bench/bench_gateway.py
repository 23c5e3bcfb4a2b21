"""What the gateway adds: the same completions through the gateway and straight to chat, side by side.

Eight runs at a fixed concurrency on the fake provider (no delay): non-streamed and streamed, each through
the gateway (authentication, request ring + token bucket + quota reservation in one Lua script, stream
lease, internal token, forwarding, settlement), directly to chat (with an internal token minted here),
through a bare forwarder (uvicorn + the gateway's own HTTP client and nothing else,
``bench/bare_forwarder.py``) and through the same forwarder on aiohttp's client, in three interleaved
rounds of 5 s. For each: requests/s, p50/p99 latency from wrk, and CPU per request of the gateway, chat
and forwarder processes, from their own CPU time over the run (so the load generator's cost never
counts); the headline figure is the median of the rounds, each round is kept beside it. Goal: under 1 ms
of gateway CPU per request. The bare forwarder is the floor under that number on the day's machine: the
ratio of the two is what the gateway's own work costs, comparable across runs where absolute times are
not (this shared 2-core machine's speed varies by more than half from one session to the next; chat's
own CPU per request, in the same file, shows the day's speed).

wrk (a C load generator, aimed at 127.0.0.1 only) keeps the client's own CPU low; it is installed with
apt-get when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from parley_common.auth.internal import InternalIdentity, PlanClaims, mint_internal_token
from parley_common.auth.keys import generate_private_key_pem, load_signing_keys
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, venv_command

from bench.context import ROOT, BenchContext, cpu_seconds, start_provider_and_chat, unlimited_account

CONNECTIONS = 16
SECONDS = 5
ROUNDS = 3
MESSAGES = [{"role": "user", "content": "Give me three words about the sea, please."}]


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True, timeout=300)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk could not be installed")
    return found


def wrk_script(body: dict[str, Any], token: str, directory: Path, name: str) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{json.dumps(body)}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return path


def _ms(text: str) -> float:
    """wrk's ``850.00us``, ``4.29ms``, ``1.02s`` in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def measure(
    wrk: str, url: str, script: Path, processes: dict[str, ManagedProcess], seconds: int = SECONDS
) -> dict[str, Any]:
    before = {name: cpu_seconds(p) for name, p in processes.items()}
    out = subprocess.run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    after = {name: cpu_seconds(p) for name, p in processes.items()}
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    result: dict[str, Any] = {
        "requests": requests,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": round(_ms(percentiles["50"]), 2),
        "p99_ms": round(_ms(percentiles["99"]), 2),
    }
    for name in processes:
        result[f"{name}_cpu_ms_per_request"] = round(
            (after[name] - before[name]) * 1000 / max(requests, 1), 3
        )
    return result


def medians(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (requests and failures: their sums)."""
    out: dict[str, Any] = {}
    for key in measured[0]:
        values = [m[key] for m in measured]
        out[key] = sum(values) if key in ("requests", "non_2xx") else statistics.median(values)
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    wrk = ensure_wrk()
    pem = generate_private_key_pem()
    key = load_signing_keys(pem)[0]
    env = {**ctx.service_env(key, log_level="INFO"), "PARLEY_JWT_PRIVATE_KEYS": pem}
    chat, chat_url = start_provider_and_chat(ctx, env)
    gateway_port = free_port()
    gateway = ctx.processes.spawn(
        "gateway",
        [venv_command("parley-gateway-api")],
        {**env, "PARLEY_HTTP_PORT": str(gateway_port), "PARLEY_CHAT_URL": chat_url},
        ready_url=f"http://127.0.0.1:{gateway_port}/readyz",
    )
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    user_id, token, plan = unlimited_account(gateway_url, env, ctx.redis_url, ctx.redis_prefix)
    internal = mint_internal_token(
        key,
        InternalIdentity(
            user_id=user_id,
            plan=PlanClaims(
                name=plan["name"],
                default_model=plan["default_model"],
                allowed_models=plan["allowed_models"],
                model_routes=plan["model_routes"],
                cache=plan["cache"],
            ),
        ),
        ttl=3600,
    )
    floors: dict[str, tuple[str, ManagedProcess]] = {}
    for floor, client in (("bare_forwarder", "parley"), ("aiohttp_forwarder", "aiohttp")):
        port = free_port()
        floors[floor] = (
            f"http://127.0.0.1:{port}",
            ctx.processes.spawn(
                floor,
                [sys.executable, "-m", "uvicorn", "bench.bare_forwarder:app", "--port", str(port)]
                + ["--no-access-log", "--log-level", "warning"],
                {
                    "BARE_FORWARDER_UPSTREAM": chat_url,
                    "BARE_FORWARDER_TOKEN": internal,
                    "BARE_FORWARDER_CLIENT": client,
                    "PYTHONPATH": str(ROOT),
                },
                ready_url=f"http://127.0.0.1:{port}/livez",
            ),
        )
    processes = {"gateway": gateway, "chat": chat, **{name: proc for name, (_, proc) in floors.items()}}
    results: dict[str, Any] = {
        "connections": CONNECTIONS,
        "seconds_per_round": SECONDS,
        "rounds": ROUNDS,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for mode, body in (
            ("completion", {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16}),
            (
                "stream",
                {
                    "model": "gpt-4o-mini",
                    "messages": MESSAGES,
                    "max_tokens": 16,
                    "stream": True,
                    # Usage in the last chunk, as chat sends it to the gateway under x-parley-usage.
                    "stream_options": {"include_usage": True},
                },
            ),
        ):
            targets = {
                "gateway": (gateway_url, wrk_script(body, token, directory, f"{mode}-gateway")),
                "direct": (chat_url, wrk_script(body, internal, directory, f"{mode}-direct")),
                **{
                    floor: (url, wrk_script(body, internal, directory, f"{mode}-{floor}"))
                    for floor, (url, _) in floors.items()
                },
            }
            for url, script in targets.values():
                measure(wrk, url + "/v1/chat/completions", script, processes, seconds=2)  # warm-up
            # Interleaved rounds: a slow spell of the machine then touches every path, not just one.
            rounds: dict[str, list[dict[str, Any]]] = {path: [] for path in targets}
            for _ in range(ROUNDS):
                for path, (url, script) in targets.items():
                    rounds[path].append(measure(wrk, url + "/v1/chat/completions", script, processes))
            for path, measured in rounds.items():
                results["runs"][f"{mode}_{path}"] = {**medians(measured), "rounds": measured}
    runs = results["runs"]
    results["summary"] = {
        "gateway_cpu_ms_per_request": {
            "completion": runs["completion_gateway"]["gateway_cpu_ms_per_request"],
            "stream": runs["stream_gateway"]["gateway_cpu_ms_per_request"],
        },
        "requests_per_second": {name: run["requests_per_second"] for name, run in runs.items()},
        "p50_ms": {name: run["p50_ms"] for name, run in runs.items()},
        "p99_ms": {name: run["p99_ms"] for name, run in runs.items()},
        # The same forwarding with nothing around it, on the gateway's own server and client: the floor
        # under the gateway's number on this machine. And with aiohttp's client: a typical Python forwarder.
        "bare_forwarder_cpu_ms_per_request": {
            m: runs[f"{m}_bare_forwarder"]["bare_forwarder_cpu_ms_per_request"]
            for m in ("completion", "stream")
        },
        "aiohttp_forwarder_cpu_ms_per_request": {
            m: runs[f"{m}_aiohttp_forwarder"]["aiohttp_forwarder_cpu_ms_per_request"]
            for m in ("completion", "stream")
        },
        "gateway_cpu_vs_bare_forwarder": {
            m: round(
                runs[f"{m}_gateway"]["gateway_cpu_ms_per_request"]
                / max(runs[f"{m}_bare_forwarder"]["bare_forwarder_cpu_ms_per_request"], 0.001),
                2,
            )
            for m in ("completion", "stream")
        },
        "goal_under_1ms": all(
            runs[f"{m}_gateway"]["gateway_cpu_ms_per_request"] < 1.0 for m in ("completion", "stream")
        ),
    }
    ctx.notes.append(
        "gateway_cpu_ms_per_request is the gateway process's CPU time over a run divided by the requests "
        "served; the other runs show the gateway idle (~0). The bare_forwarder runs forward the same "
        "requests through uvicorn and the gateway's own HTTP client alone (bench/bare_forwarder.py): the "
        "floor under the gateway's number on this machine. The aiohttp_forwarder runs do the same with "
        "aiohttp's client, as a typical Python forwarder would."
    )
    return results
