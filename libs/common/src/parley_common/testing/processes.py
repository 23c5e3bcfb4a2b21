"""Real subprocesses for tests: started with their own environment and log file, stopped by PID.

Only processes this module started (and their descendants, found before stopping) are ever signalled;
nothing is killed by name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from parley_common.testing.net import wait_http_ok


def venv_command(name: str) -> str:
    """Path of a console script installed next to the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {path.parent}; run `uv sync --all-packages`")
    return str(path)


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        ready_url: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.ready_url = ready_url
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 30.0) -> ManagedProcess:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.starts += 1
        if self.ready_url:
            try:
                wait_http_ok(self.ready_url, timeout=timeout, alive=self.alive)
            except Exception as exc:
                raise RuntimeError(
                    f"{self.name} did not become ready: {exc}\n--- log tail ---\n{self.tail()}"
                ) from exc
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def descendants(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            children: list[psutil.Process] = psutil.Process(self.pid).children(recursive=True)
            return children
        except psutil.NoSuchProcess:
            return []

    def children_pids(self) -> list[int]:
        return [p.pid for p in self.descendants()]

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the process and whatever it forked (they would otherwise linger as orphans)."""
        family = self.descendants()
        self.signal(signal.SIGKILL)
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; descendants too."""
        if self.popen is None:
            return
        family = self.descendants()
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        for child in family:
            try:
                child.wait(timeout=2)
            except psutil.TimeoutExpired:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    def restart(self, timeout: float = 30.0) -> ManagedProcess:
        self.stop()
        return self.start(timeout=timeout)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def json_lines(self) -> list[dict[str, Any]]:
        """Every line of the log that is a JSON object."""
        records: list[dict[str, Any]] = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool] | str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait until a JSON log line matches ``predicate`` (a callable, or a regex on the ``event`` key)."""
        check: Callable[[dict[str, Any]], bool]
        if isinstance(predicate, str):
            pattern = re.compile(predicate)
            check = lambda record: bool(pattern.search(str(record.get("event", ""))))
        else:
            check = predicate
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.json_lines():
                if check(record):
                    return record
            if not self.alive():
                break
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no matching log line\n--- log tail ---\n{self.tail()}")


class ProcessManager:
    """Starts processes for one test (or module) and stops every one of them at the end."""

    def __init__(self, log_dir: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.base_env = dict(base_env or {})
        self.processes: list[ManagedProcess] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        ready_url: str | None = None,
        timeout: float = 30.0,
    ) -> ManagedProcess:
        full_env = {**os.environ, **self.base_env, **(env or {})}
        process = ManagedProcess(name, argv, full_env, self.log_dir / f"{name}.log", ready_url=ready_url)
        self.processes.append(process)
        return process.start(timeout=timeout)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
