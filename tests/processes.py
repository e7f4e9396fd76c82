"""The relay and the operator as users run them: separate `gptomni-relay` and
`gptomni-operator` processes on free loopback ports; `spawned` runs any test process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.kube_client import write_kubeconfig
from tests.polling import wait_until


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

    def cpu_seconds(self) -> float:
        """CPU time the relay process has used so far (user + system)."""
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        """Everything the process logged so far (a file, not a pipe: a full pipe would stall it)."""
        with open(self.log.name, encoding="utf-8") as handle:
            return handle.read()


@dataclass
class OperatorProcess(RelayProcess):
    """`port` is kopf's liveness endpoint."""


def wait_ready(url: str, process: subprocess.Popen[str], log_path: str, timeout: float = 30,
               path: str = "/healthz") -> None:
    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early:\n{Path(log_path).read_text(encoding='utf-8')}")
        return httpx.get(f"{url}{path}", timeout=1).status_code == 200

    try:
        wait_until(answers, timeout, 0.1, f"{process.args[0]} answering {path} on {url}", ignoring=(httpx.HTTPError,))
    except AssertionError as exc:
        raise TimeoutError(f"{exc}:\n{Path(log_path).read_text(encoding='utf-8')}") from None


@contextmanager
def spawned(command: list[str], url: str, ready_path: str = "/healthz", env: dict[str, str] | None = None,
            ) -> Iterator[tuple[subprocess.Popen[str], tempfile._TemporaryFileWrapper[str]]]:
    """`command` with only `env` of ours (no GPTOMNI_/OTEL_/KUBECONFIG of the test run),
    its output in a log file, up once `url` answers 200 on `ready_path`; stopped with
    SIGTERM (as kubelet does) at the end, killed if it has not stopped 30 s later."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTOMNI_", "OTEL_", "KUBECONFIG"))}
    full_env.update(env or {})
    log = tempfile.NamedTemporaryFile("w+", prefix=f"{Path(command[0]).name}-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(url, process, log.name, path=ready_path)
        yield process, log
    finally:
        end_process(process, lambda: process.send_signal(signal.SIGTERM))
        log.close()


@contextmanager
def relay_process(*args: str, env: dict[str, str] | None = None) -> Iterator[RelayProcess]:
    port, metrics_port = free_port(), free_port()
    env = {"GPTOMNI_METRICS_PORT": str(metrics_port), **(env or {})}
    command = [sys.executable, "-m", "gptomni_relay", "--port", str(port), *args]
    with spawned(command, f"http://127.0.0.1:{port}", env=env) as (process, log):
        yield RelayProcess(process, port, int(env["GPTOMNI_METRICS_PORT"]), log)


@contextmanager
def operator_process(kube_server: str, upstream_url: str, env: dict[str, str] | None = None) -> Iterator[OperatorProcess]:
    """`gptomni-operator --all-namespaces` against the API server at `kube_server` (through a
    kubeconfig, as outside a cluster); up once its metrics answer."""
    liveness_port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="operator-") as home:
        kubeconfig = Path(home) / "kubeconfig"
        write_kubeconfig(kubeconfig, kube_server, token="test")
        env = {"KUBECONFIG": str(kubeconfig), "GPTOMNI_UPSTREAM_URL": upstream_url, **(env or {})}
        command = [sys.executable, "-m", "gptomni_operator", "--all-namespaces", f"--metrics-port={metrics_port}",
                   f"--liveness=http://127.0.0.1:{liveness_port}/healthz"]
        with spawned(command, f"http://127.0.0.1:{metrics_port}", "/metrics", env) as (process, log):
            yield OperatorProcess(process, liveness_port, metrics_port, log)


def end_process(process: subprocess.Popen[str], ask_to_stop: Callable[[], object], timeout: float = 30) -> None:
    """If `process` still runs: ask it to stop, and kill it if it has not within `timeout`."""
    if process.poll() is None:
        ask_to_stop()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
