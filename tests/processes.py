"""The relay as users run it: a separate `gptomni-relay` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RelayProcess:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: tempfile._TemporaryFileWrapper[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def peak_memory_mb(self) -> float:
        """The relay process's own peak resident memory (VmHWM), in MB."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def output(self) -> str:
        """Everything the process logged so far (a file, not a pipe: a full pipe would stall it)."""
        with open(self.log.name, encoding="utf-8") as handle:
            return handle.read()


def wait_ready(url: str, process: subprocess.Popen[str], log_path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, encoding="utf-8") as handle:
                raise RuntimeError(f"relay exited early:\n{handle.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    with open(log_path, encoding="utf-8") as handle:
        raise TimeoutError(f"relay did not answer /healthz on {url} within {timeout} s:\n{handle.read()}")


@contextmanager
def relay_process(*args: str, env: dict[str, str] | None = None) -> Iterator[RelayProcess]:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTOMNI_", "OTEL_"))}
    full_env["GPTOMNI_METRICS_PORT"] = str(free_port())
    full_env.update(env or {})
    log = tempfile.NamedTemporaryFile("w+", prefix="relay-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "gptomni_relay", "--port", str(port), *args],
        env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log.name)
        yield RelayProcess(process, port, int(full_env["GPTOMNI_METRICS_PORT"]), log)
    finally:
        end_process(process, lambda: process.send_signal(signal.SIGTERM))
        log.close()


def end_process(process: subprocess.Popen[str], ask_to_stop: Callable[[], object], timeout: float = 30) -> None:
    """If `process` still runs: ask it to stop, and kill it if it has not within `timeout`."""
    if process.poll() is None:
        ask_to_stop()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
