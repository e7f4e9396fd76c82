"""A real Prometheus server (Debian's package, scripts/provision/40-prometheus.sh) for tests:
its own free loopback port, its own config and data directory in a temporary folder, a
1 s scrape and rule-evaluation interval. Queries go through the HTTP API as Grafana's do."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.polling import wait_until
from tests.processes import free_port, spawned
from tests.system_parts import require_binary

SCRAPE_SECONDS = 1.0


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    port: int
    labels: dict[str, str]  # what Kubernetes service discovery would add: namespace, pod


@dataclass
class Sample:
    labels: dict[str, str]
    value: float


@dataclass
class PrometheusServer:
    url: str
    log_path: Path

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query; a scalar result is one sample without labels."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        return [Sample(item["metric"], float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float:
        """The one value of a query that must return exactly one sample."""
        samples = self.query(expr, at)
        assert len(samples) == 1, f"{expr}: {samples}"
        return samples[0].value

    def wait_until(self, expr: str, timeout: float = 30.0) -> list[Sample]:
        """Polls until the query returns samples (bounded in time)."""
        def answered() -> list[Sample] | None:
            samples = self.query(expr)
            return samples if samples and all(not math.isnan(sample.value) for sample in samples) else None

        return wait_until(answered, timeout, SCRAPE_SECONDS / 4, f"Prometheus returning {expr!r}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def config(targets: list[ScrapeTarget], rule_files: list[Path]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS:g}s", "scrape_timeout": f"{SCRAPE_SECONDS:g}s",
                   "evaluation_interval": f"{SCRAPE_SECONDS:g}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": target.job, "static_configs": [{"targets": [f"127.0.0.1:{target.port}"], "labels": target.labels}]}
            for target in targets
        ],
    }


@contextmanager
def prometheus_server(workdir: Path, targets: list[ScrapeTarget], rule_files: list[Path]) -> Iterator[PrometheusServer]:
    binary = require_binary("prometheus", "40-prometheus.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config(targets, rule_files)))
    url = f"http://127.0.0.1:{free_port()}"
    command = [str(binary), f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
               f"--web.listen-address={url.removeprefix('http://')}", "--storage.tsdb.retention.time=1h",
               "--log.level=warn"]
    with spawned(command, url, "/-/ready") as (_, log):
        yield PrometheusServer(url, Path(log.name))
