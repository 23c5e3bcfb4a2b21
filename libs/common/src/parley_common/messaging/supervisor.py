"""A worker made of a supervising main process and N consumer child processes.

``run_supervised`` is the body of a worker entry point. Called in the main process, it starts
``worker_concurrency`` children (the same command again, marked by an environment variable), serves
``/metrics`` for all of them (Prometheus multiprocess mode), restarts a child that dies, and on SIGTERM
asks every child to finish what it holds before it exits. Called in a child, it runs ``child(stop)``
until SIGTERM, or until the main process dies: a child never outlives its supervisor (Linux parent-death
signal, plus a watch on the parent's PID elsewhere), so a restarted worker never runs next to orphans.

Why processes and not threads or tasks: one Python process uses one core; two consumers use two.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from parley_common.logs import get_logger
from parley_common.process import init_process

log = get_logger("parley.supervisor")

CHILD_ENV = "PARLEY_WORKER_CHILD"
_PARENT_ENV = "PARLEY_WORKER_PARENT_PID"
_READY_FD_ENV = "PARLEY_WORKER_READY_FD"
_PR_SET_PDEATHSIG = 1

ChildMain = Callable[[asyncio.Event, Callable[[], None]], Awaitable[None]]


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_read: int = -1
    started_at: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    ready: bool = False


def run_supervised(service: str, process: str, settings: Any, child: ChildMain) -> None:
    """Run a supervised worker; ``child(stop, ready)`` is the body of each child process.

    ``settings`` needs ``worker_concurrency``, ``metrics_port``, ``worker_stop_grace`` and the
    :class:`~parley_common.settings.ParleySettings` fields. The child calls ``ready()`` once it consumes;
    the main process logs ``worker.ready.`` when every child has.
    """
    if os.environ.get(CHILD_ENV):
        _run_child(service, process, settings, child)
    else:
        _supervise(service, process, settings)


def _run_child(service: str, process: str, settings: Any, child: ChildMain) -> None:
    parent = int(os.environ.get(_PARENT_ENV, "0"))
    _die_with_parent(parent)
    init_process(service, process, settings)
    ready_fd = int(os.environ.get(_READY_FD_ENV, "-1"))

    def ready() -> None:
        nonlocal ready_fd
        if ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"r")
                os.close(ready_fd)
            ready_fd = -1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def watch_parent() -> None:
            while not stop.is_set():
                if parent and os.getppid() != parent:
                    log.warning("worker.parent_gone")
                    stop.set()
                await asyncio.sleep(0.5)

        watcher = asyncio.ensure_future(watch_parent())
        try:
            await child(stop, ready)
        finally:
            watcher.cancel()

    asyncio.run(main())


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent and os.getppid() != parent:  # the parent died before prctl: go now
        sys.exit(0)


def _supervise(service: str, process: str, settings: Any) -> None:
    init_process(service, process, settings)
    slots = [_Slot(i) for i in range(settings.worker_concurrency)]
    health = None
    if settings.metrics_port:
        # /metrics (every child's, multiprocess mode), /livez, and /readyz: ready once every child
        # consumes and while the database and Redis answer; not ready again from SIGTERM on.
        from parley_common.health import serve_health, settings_checks

        health = serve_health(settings.metrics_port)
        for name, check in settings_checks(settings, name=f"{service}.{process}").items():
            health.add_check(name, check)
        health.add_check(
            "consumers",
            lambda: all(s.ready and s.process is not None and s.process.poll() is None for s in slots),
        )
    stopping = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    announced = False
    log.info("worker.starting", children=len(slots))
    while not stopping:
        now = time.monotonic()
        for slot in slots:
            if slot.process is None and now >= slot.next_start:
                _start(slot)
            elif slot.process is not None and slot.process.poll() is not None:
                _reap(slot)
        _collect_ready(slots)
        if not announced and all(slot.ready for slot in slots):
            announced = True
            # Ends in "ready." like Celery's own start-up line, which tooling and tests wait for.
            log.info("worker.ready.", children=[s.process.pid for s in slots if s.process])
            if health is not None:
                health.set_started()
        time.sleep(0.1)
    if health is not None:
        health.set_started(False)
    _stop_all(slots, settings.worker_stop_grace)


def _start(slot: _Slot) -> None:
    ready_read, ready_write = os.pipe()
    env = {
        **os.environ,
        CHILD_ENV: str(slot.index + 1),
        _PARENT_ENV: str(os.getpid()),
        _READY_FD_ENV: str(ready_write),
    }
    # The same entry point again: argv[0] is the console script that started us.
    slot.process = subprocess.Popen([sys.executable, *sys.argv], env=env, pass_fds=(ready_write,))
    os.close(ready_write)
    slot.ready_read = ready_read
    slot.started_at = time.monotonic()
    slot.ready = False
    log.info("worker.child_started", child=slot.index + 1, pid=slot.process.pid)


def _reap(slot: _Slot) -> None:
    assert slot.process is not None
    code = slot.process.returncode
    pid = slot.process.pid
    _mark_dead(pid)
    if slot.ready_read >= 0:
        os.close(slot.ready_read)
        slot.ready_read = -1
    quick = time.monotonic() - slot.started_at < 10
    slot.failures = slot.failures + 1 if quick else 0
    # Restart at once after a crash; back off when a child keeps dying young (bad config, no broker).
    delay = min(0.5 * 2 ** max(slot.failures - 1, 0), 30.0) if slot.failures else 0.0
    slot.next_start = time.monotonic() + delay
    slot.process = None
    log.warning("worker.child_exited", child=slot.index + 1, pid=pid, exit_code=code, restart_in=delay)


def _collect_ready(slots: list[_Slot]) -> None:
    fds = [slot.ready_read for slot in slots if slot.ready_read >= 0 and not slot.ready]
    if not fds:
        return
    readable, _, _ = select.select(fds, [], [], 0)
    for slot in slots:
        if slot.ready_read in readable:
            with contextlib.suppress(OSError):
                if os.read(slot.ready_read, 1):
                    slot.ready = True


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _stop_all(slots: list[_Slot], grace: float) -> None:
    running = [slot.process for slot in slots if slot.process is not None and slot.process.poll() is None]
    log.info("worker.stopping", children=len(running), grace=grace)
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("worker.child_killed", pid=child.pid)
            child.kill()
            child.wait(timeout=5)
    log.info("worker.stopped")
