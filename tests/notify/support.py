"""The SMTP sink as a real process, and reading what it received."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley_common.testing.net import free_port, tcp_open
from parley_common.testing.processes import ManagedProcess, ProcessManager

SINK = Path(__file__).with_name("smtp_sink.py")


@dataclass
class SmtpSink:
    process: ManagedProcess
    port: int
    out: Path

    def messages(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def to(self, address: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if address in m["to"]]

    def env(self) -> dict[str, str]:
        """Notify settings that point at this sink (plain SMTP, no AUTH)."""
        return {
            "PARLEY_SMTP_HOST": "127.0.0.1",
            "PARLEY_SMTP_PORT": str(self.port),
            "PARLEY_SMTP_STARTTLS": "false",
        }

    def by_message_id(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in self.messages():
            counts[message["message_id"]] = counts.get(message["message_id"], 0) + 1
        return counts


def start_smtp_sink(manager: ProcessManager, *args: str, name: str = "smtp-sink") -> SmtpSink:
    port = free_port()
    out = manager.log_dir / f"{name}.jsonl"
    process = manager.spawn(name, [sys.executable, str(SINK), "--port", str(port), "--out", str(out), *args])
    deadline = time.monotonic() + 20
    while not tcp_open("127.0.0.1", port, timeout=0.2):
        if time.monotonic() > deadline or not process.alive():
            raise RuntimeError(f"the SMTP sink did not start\n{process.tail()}")
        time.sleep(0.05)
    return SmtpSink(process, port, out)
