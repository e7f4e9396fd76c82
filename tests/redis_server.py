"""A real Redis for the shared-pool tests: Debian's redis-server on a free loopback port.

Never the system service: the tests start their own server (no persistence, so a restart
loses every key, as a crashed cache would), stop it by PID and may start it again on
the same port.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.processes import free_port
from tests.system_parts import require_binary


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.binary = require_binary("redis-server", "20-redis.sh")
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2,
                           decode_responses=True)

    def start(self, timeout: float = 10) -> None:
        args = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        """Stops our server by its PID (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
