"""The dashboard and the alerts on a real Prometheus scraping a real relay and a real operator.

One system for the module: the GPT-Omni simulator and a Kubernetes API (kmock) on a
background loop, `gptomni-relay` and `gptomni-operator` as processes, and Prometheus
(Debian's package, scripts/provision/40-prometheus.sh) scraping both every second with
the shipped alert rules loaded, the targets labelled as Kubernetes discovery labels them.

Every panel query of the shipped dashboard is evaluated through Prometheus' HTTP API,
with Grafana's variables substituted (the namespace as the dashboard's own variable
query finds it) twice: on the quiet system before any request (every panel shows 0, not
"No data"), and after traffic that covers success, failover, a wait for a credential
slot, every error class, pool reloads and an invalid pool file (every panel shows
numbers). Then what Prometheus holds is checked against what was driven.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import kmock
import pytest

from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from tests.harness import BackgroundLoop, sample_value, write_pool_file, write_raw_pool_file
from tests.kube_client import KubeClient
from tests.monitoring_files import DEFAULT_VARIABLES, RULES, PanelQuery, panel_queries
from tests.operator_env import ApiServerLikeEmulator, declare_resources
from tests.polling import wait_until
from tests.processes import operator_process, relay_process
from tests.prometheus_server import SCRAPE_SECONDS, PrometheusServer, Sample, ScrapeTarget, prometheus_server

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "gptomni"  # where the relay and operator pods run, as their targets say
RELAY_POD, OPERATOR_POD = "gptomni-relay-7d9f-abcde", "gptomni-operator-5c6b-fghij"
KEYS = {"team-a": "sk-team-a-9f2c41d7e3b8a6", "team-b": "sk-team-b-1e8d7c6b5a4f30"}
LEGACY_KEY = "sk-legacy-unnamed-7a6b5c4d3e"  # a bare key, as configured before names
COOKIES = {name: f"session={name}-c00k1e" for name in ("alpha", "beta", "gamma", "delta", "epsilon", "op-ok", "op-bad")}
MESSAGES = [{"role": "user", "content": "Hello"}]
QUERIES = panel_queries()


def entry(name: str, **more: Any) -> dict[str, Any]:
    return {"id": f"default/{name}", "cookie": COOKIES[name], **more}


@dataclass
class System:
    prometheus: PrometheusServer
    relay_url: str
    relay_metrics_url: str
    pool_dir: Path
    variables: dict[str, str] = field(default_factory=dict)
    quiet_at: float = 0.0  # before any request
    busy_at: float = 0.0  # after the traffic
    statuses: dict[str, int] = field(default_factory=dict)  # what the traffic got, by status

    def relay_scrape(self) -> str:
        return httpx.get(self.relay_metrics_url, timeout=10).text

    def chat(self, key: str | None, *, stream: bool = False, model: str = "gptomni", timeout: float = 30,
             content: bytes | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": model, "messages": MESSAGES, "stream": stream}
        with httpx.Client(base_url=self.relay_url, headers=headers, timeout=timeout) as http:
            request = http.build_request("POST", "/v1/chat/completions", json=None if content else body, content=content)
            response = http.send(request, stream=True)
            try:
                return response.status_code, response.read().decode()
            finally:
                response.close()

    def reload_pool(self, entries: list[dict[str, Any]] | None, raw: bytes | None = None) -> None:
        """Writes the pool file as kubelet swaps a Secret, then waits until the relay took it."""
        result = "invalid" if raw is not None else "ok"
        before = sample_value(self.relay_scrape(), "gptomni_pool_reloads_total", result=result)
        if raw is not None:
            write_raw_pool_file(self.pool_dir, raw)
        else:
            write_pool_file(self.pool_dir, entries or [])
        wait_until(lambda: sample_value(self.relay_scrape(), "gptomni_pool_reloads_total", result=result) != before,
                   what="the relay reloading its pool file")

    def wait_for_scrape_after(self, moment: float) -> None:
        """Until Prometheus holds a scrape of both targets taken after `moment`."""
        wait_until(lambda: min((s.value for s in self.prometheus.query("timestamp(up)")), default=0.0) > moment + 0.05,
                   15, SCRAPE_SECONDS / 4, "a scrape of both targets after the moment")

    def evaluate(self, query: PanelQuery, at: float) -> list[Sample]:
        return self.prometheus.query(query.substituted(self.variables), at)


@asynccontextmanager
async def kube_api() -> AsyncIterator[Any]:
    """kmock's Kubernetes API with the resources the operator uses, on this loop."""
    async with ApiServerLikeEmulator() as api, kmock.Server(api):
        declare_resources(api)
        yield api


def drive_traffic(system: System, sim: SimulatorState) -> dict[str, int]:
    """Success, failover, a slot wait, every error class, pool reloads; returns the statuses."""
    statuses: dict[str, int] = {}

    def count(status: int) -> None:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    # alpha is rejected (ejected on first use: a failover), gamma answers one request at a time.
    team_a, team_b = KEYS["team-a"], KEYS["team-b"]
    for stream in (True, True, True, False):
        status, body = system.chat(team_a, stream=stream)
        assert status == 200 and ("[DONE]" in body if stream else '"finish_reason":"stop"' in body), body
        count(status)
    count(system.chat(LEGACY_KEY)[0])
    # A stream holds gamma's one slot for about 2 s (a long prompt is echoed back slowly)
    # while a second request asks: it waits for the slot.
    second: list[int] = []
    waiter = threading.Thread(target=lambda: second.append(system.chat(team_b, stream=True)[0]))
    long_prompt = [{"role": "user", "content": " ".join(["word"] * 40)}]
    with httpx.Client(base_url=system.relay_url, headers={"Authorization": f"Bearer {team_b}"}, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={"model": "gptomni", "messages": long_prompt, "stream": True}) as first:
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")  # the answer has started: the slot is taken
        waiter.start()
        assert "data: [DONE]" in list(lines)
    waiter.join(30)
    assert first.status_code == 200 and second == [200]
    statuses["200"] += 2
    for key, kwargs in ((None, {}), ("sk-wrong-key", {}), (team_a, {"model": "no-such-model"}),
                        (team_a, {"content": b"{not json"}), (team_a, {"content": b"x" * 8192})):
        count(system.chat(key, **kwargs)[0])

    system.reload_pool([entry("beta")])  # cuts every answer after two pieces
    status, body = system.chat(team_a, stream=True)
    assert status == 200 and '"error"' in body and "[DONE]" not in body
    count(502)  # a stream that broke after it started is counted with its error status
    count(system.chat(team_a)[0])
    system.reload_pool([entry("delta")])  # rate-limited: cools down
    count(system.chat(team_a)[0])
    system.reload_pool([entry("epsilon")])  # answers after 3 s; the relay waits 1 s
    count(system.chat(team_b)[0])
    with pytest.raises(httpx.ReadTimeout):  # the client gives up first: 499
        system.chat(team_b, stream=True, timeout=0.3)
    count(499)
    system.reload_pool([entry("alpha")])  # rejected, and nothing else left
    count(system.chat(team_a)[0])
    system.reload_pool(None, raw=b'{"version": 1, "credentials": "not a list"}')
    assert sim.received, "the simulator was never reached"
    return statuses


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    work = tmp_path_factory.mktemp("prometheus-tier")
    sim = SimulatorState(accepted={COOKIES[n] for n in ("beta", "gamma", "delta", "epsilon", "op-ok")})
    sim.set(COOKIES["gamma"], token_delay=0.05)
    sim.set(COOKIES["beta"], cut_after=2)
    sim.set(COOKIES["delta"], status=429, retry_after=60)
    sim.set(COOKIES["epsilon"], first_byte_delay=3)
    pool_dir = work / "pool"
    write_pool_file(pool_dir, [entry("alpha"), entry("gamma", maxConcurrency=1)])
    keys_file = work / "api-keys"
    keys_file.write_text("".join(f"{name}:{key}\n" for name, key in KEYS.items()) + LEGACY_KEY + "\n")
    loop = BackgroundLoop()
    with ExitStack() as stack:
        stack.callback(loop.close)
        sim_url = loop.enter(serve_app(build_simulator_app(sim))).url
        api = loop.enter(kube_api())
        relay = stack.enter_context(relay_process(env={
            "GPTOMNI_UPSTREAM_URL": sim_url, "GPTOMNI_CREDENTIALS_FILE": str(pool_dir / "credentials.json"),
            "GPTOMNI_API_KEYS_FILE": str(keys_file), "GPTOMNI_CREDENTIALS_POLL_SECONDS": "0.1",
            "GPTOMNI_EJECT_PROBE_SECONDS": "0", "GPTOMNI_FIRST_BYTE_TIMEOUT_SECONDS": "1",
            "GPTOMNI_MAX_BODY_BYTES": "4096",
        }))
        operator = stack.enter_context(operator_process(str(api.url).rstrip("/"), sim_url))
        prometheus = stack.enter_context(prometheus_server(work / "prometheus", [
            ScrapeTarget("gptomni-relay", relay.metrics_port, {"namespace": NAMESPACE, "pod": RELAY_POD}),
            ScrapeTarget("gptomni-operator", operator.metrics_port, {"namespace": NAMESPACE, "pod": OPERATOR_POD}),
        ], [RULES]))
        system = System(prometheus, relay.url, f"http://127.0.0.1:{relay.metrics_port}/metrics", pool_dir)

        async def credentials() -> None:
            async with aiohttp.ClientSession() as http:
                kube = KubeClient(http, str(api.url).rstrip("/"), token="kmock")
                for name in ("op-ok", "op-bad"):
                    await kube.put_cookie_secret(f"{name}-cookie", COOKIES[name])
                    await kube.add_credential(name, f"{name}-cookie")

        try:
            prometheus.wait_until("count(up == 1) == 2")
            loop.run(credentials())  # checked after the first scrape: Prometheus sees them happen
            prometheus.wait_until("gptomni_operator_healthy_credentials == 1")
            prometheus.wait_until('sum(gptomni_operator_checks_total{result="unauthorized"}) == 1')
            # The dashboard's namespace variable, as Grafana fills it.
            namespaces = prometheus.api("label/namespace/values", **{"match[]": "gptomni_requests_total"})
            assert namespaces == [NAMESPACE], "the dashboard's namespace variable finds no namespace"
            namespace = namespaces[0]
            system.variables = {**DEFAULT_VARIABLES, "$namespace": namespace}
            time.sleep(3 * SCRAPE_SECONDS)  # a few quiet scrapes: rates need two samples
            system.quiet_at = time.time()
            system.statuses = drive_traffic(system, sim)
            system.wait_for_scrape_after(time.time())
            system.busy_at = time.time()
            yield system
        except BaseException:
            print(f"--- relay log ---\n{relay.output()}\n--- operator log ---\n{operator.output()}"
                  f"\n--- prometheus log ---\n{prometheus.output()}")
            raise


def ids(queries: list[PanelQuery]) -> list[str]:
    return [query.name for query in queries]


@pytest.mark.parametrize("query", QUERIES, ids=ids(QUERIES))
def test_panel_shows_zero_not_no_data_before_any_request(system: System, query: PanelQuery) -> None:
    samples = system.evaluate(query, system.quiet_at)
    assert samples, f"{query.name}: empty result (Grafana: No data) on a quiet system"
    if not query.is_quantile:  # a latency of no request is NaN, drawn as a gap: no number is right
        assert all(math.isfinite(sample.value) for sample in samples), samples


@pytest.mark.parametrize("query", QUERIES, ids=ids(QUERIES))
def test_panel_shows_numbers_after_traffic(system: System, query: PanelQuery) -> None:
    samples = system.evaluate(query, system.busy_at)
    assert samples, f"{query.name}: empty result"
    assert all(math.isfinite(sample.value) for sample in samples), samples
    for sample in samples:  # the legend names only labels the series carry
        assert query.legend_labels() <= set(sample.labels), (query.legend, sample.labels)


def test_quiet_panels_read_zero(system: System) -> None:
    at = system.quiet_at
    by_title = {query.name: query for query in QUERIES}
    [ratio] = system.evaluate(by_title["Error ratio [A]"], at)
    assert ratio.value == 0
    by_status = system.evaluate(by_title["Requests per second by status [A]"], at)
    assert {s.labels["status"] for s in by_status} >= {"200", "401", "429", "499", "502", "503", "504"}
    assert all(s.value == 0 for s in by_status)
    assert {s.labels["api_key"] for s in system.evaluate(by_title["Requests per second by API key [A]"], at)} == {
        "team-a", "team-b", "unnamed"}


def test_prometheus_holds_what_was_driven(system: System) -> None:
    prometheus, at = system.prometheus, system.busy_at
    # The relay's counters as Prometheus holds them, with Kubernetes' target labels.
    got = {s.labels["status"]: int(s.value) for s in prometheus.query("sum by (status) (gptomni_requests_total)", at)
           if s.value}
    assert got == system.statuses == {"200": 7, "400": 1, "401": 2, "404": 1, "413": 1, "429": 1, "499": 1, "502": 2,
                               "503": 1, "504": 1}
    assert {s.labels["pod"] for s in prometheus.query("gptomni_requests_total", at)} == {RELAY_POD}
    by_key = {(s.labels["api_key"], s.labels["status_class"]): int(s.value)
              for s in prometheus.query("gptomni_api_key_requests_total", at)}
    assert by_key == {("team-a", "2xx"): 4, ("team-a", "4xx"): 4, ("team-a", "5xx"): 3,
                      ("team-b", "2xx"): 2, ("team-b", "4xx"): 1, ("team-b", "5xx"): 1,
                      ("unnamed", "2xx"): 1, ("unnamed", "4xx"): 0, ("unnamed", "5xx"): 0}
    assert prometheus.value("gptomni_failovers_total", at) == 1
    # Both answers beta broke after their first piece: the stream and the whole answer.
    assert prometheus.value('gptomni_stream_interruptions_total{outcome="error"}', at) == 2
    # GPT-Omni's own first-text time, once per attempt that got one: gamma 7, beta 2.
    assert prometheus.value("gptomni_upstream_time_to_first_token_seconds_count", at) == 9
    # The second of the two requests on gamma's one slot waited for the first (about 2 s).
    assert prometheus.value('gptomni_credential_wait_seconds_count - ignoring(le) '
                            'gptomni_credential_wait_seconds_bucket{le="1.0"}', at) == 1
    assert prometheus.value('gptomni_credential_wait_seconds_bucket{le="0.025"}', at) >= 5
    assert prometheus.value('sum(gptomni_pool_reloads_total{result="ok"})', at) == 5
    assert prometheus.value('gptomni_pool_reloads_total{result="invalid"}', at) == 1


def test_pool_gauges_follow_the_pool(system: System) -> None:
    prometheus, quiet, busy = system.prometheus, system.quiet_at, system.busy_at
    states = {s.labels["state"]: s.value for s in prometheus.query("gptomni_credentials", quiet)}
    assert states == {"healthy": 2, "cooling": 0, "ejected": 0}
    # At the end only alpha is left (ejected); the invalid file changed nothing.
    states = {s.labels["state"]: s.value for s in prometheus.query("gptomni_credentials", busy)}
    assert states == {"healthy": 0, "cooling": 0, "ejected": 1}
    credentials = {s.labels["credential"] for s in prometheus.query("gptomni_credential_state", busy)}
    assert credentials == {"default/alpha"}
    # Series of credentials that left the pool are dropped, not kept at their last value.
    attempts_before = {s.labels["credential"] for s in prometheus.query("gptomni_upstream_attempts_total", quiet)}
    attempts_after = {s.labels["credential"] for s in prometheus.query("gptomni_upstream_attempts_total", busy)}
    assert attempts_before == {"default/alpha", "default/gamma"} and attempts_after == {"default/alpha"}
    outcomes = {s.labels["outcome"] for s in prometheus.query('gptomni_upstream_attempts_total{credential="default/alpha"}', busy)}
    assert outcomes == {"ok", "unauthorized", "rate_limited", "challenge", "timeout", "error"}


def test_operator_metrics_name_the_pool_secret_namespace(system: System) -> None:
    prometheus, at = system.prometheus, system.busy_at
    [healthy] = prometheus.query("gptomni_operator_healthy_credentials", at)
    # The target's namespace (the operator pod's) and the Secret's own are both kept.
    assert healthy.labels["namespace"] == NAMESPACE and healthy.labels["secret_namespace"] == "default"
    assert healthy.labels["secret"] == "gptomni-credentials" and healthy.value == 1
    checks = {s.labels["result"]: s.value for s in prometheus.query("gptomni_operator_checks_total", at)}
    assert checks["ok"] >= 1 and checks["unauthorized"] >= 1 and checks["timeout"] == 0


def test_rules_evaluate_on_the_real_metrics(system: System) -> None:
    """The shipped rules, loaded into this Prometheus: the rejected pool file fires at once;
    a pool with nothing healthy, the error ratio (5 of 18 failed) and the slot wait (one
    wait of 2 s among fewer than 20 makes the p95) are pending (they fire after 5 and 10
    minutes); nothing else."""
    prometheus = system.prometheus
    wait_until(lambda: prometheus.query('ALERTS{alertname="GPTOmniPoolReloadRejected",alertstate="firing"}'), 10,
               SCRAPE_SECONDS / 2, "the rejected pool file's alert firing")
    alerts = {(s.labels["alertname"], s.labels["alertstate"]): s.labels for s in prometheus.query("ALERTS")}
    assert set(alerts) == {("GPTOmniPoolReloadRejected", "firing"), ("GPTOmniNoHealthyCredential", "pending"),
                           ("GPTOmniErrorRatioHigh", "pending"), ("GPTOmniCredentialWaitHigh", "pending")}
    rejected = alerts[("GPTOmniPoolReloadRejected", "firing")]
    assert rejected["pod"] == RELAY_POD and rejected["namespace"] == NAMESPACE and rejected["severity"] == "warning"
    assert alerts[("GPTOmniNoHealthyCredential", "pending")]["pod"] == RELAY_POD
    assert alerts[("GPTOmniErrorRatioHigh", "pending")]["namespace"] == NAMESPACE
    assert prometheus.query('ALERTS{alertstate="firing"}', system.quiet_at) == []


def test_no_key_or_cookie_reaches_prometheus(system: System) -> None:
    series = system.prometheus.api("series", **{"match[]": '{__name__=~"gptomni_.+"}'})
    stored = json.dumps(series)
    assert len(series) > 100
    for secret in [*KEYS.values(), LEGACY_KEY, *COOKIES.values(), "sk-wrong-key"]:
        assert secret not in stored
