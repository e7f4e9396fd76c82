"""Container tier: the image, built from the Dockerfile by a real OCI engine (podman) and
run the way the chart's Deployments run it (tests/container_engine.py).

Needs scripts/provision/30-podman.sh (podman plus the stand-in base image); with CI=true
a missing part fails, elsewhere the tier skips. The base here is a Debian bookworm
stand-in for `python:3.11-slim`, not the official image (docs/deploy.md).
"""

from __future__ import annotations

import json
import re
import tarfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gptomni_relay.edge.server import serve_app
from gptomni_relay.settings import DEMO_API_KEY
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app, default_answer
from tests.chart_render import render
from tests.container_engine import (
    BASE_IMAGE,
    COMMON_RUN_FLAGS,
    Podman,
    RelayContainer,
    RenderedPod,
    build_image,
    find_podman,
    run_container,
    secret_data,
    write_secret_dir,
)
from tests.harness import BackgroundLoop, write_pool_file
from tests.polling import wait_until
from tests.system_parts import REPO

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]  # the first test builds the image

API_KEY = "sk-container-tier-0123456789"
ALICE, BOB = "session=alice", "session=bob"
WAIT = 20  # seconds: bound of every wait for a change inside a container


@pytest.fixture(scope="module")
def podman() -> Podman:
    return find_podman()


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    return build_image(podman)


@dataclass
class Upstream:
    state: SimulatorState
    url: str


@pytest.fixture
def upstream(servers: BackgroundLoop) -> Upstream:
    """The GPT-Omni simulator on the host's 127.0.0.1, knowing two session cookies."""
    state = SimulatorState(accepted={ALICE, BOB})
    return Upstream(state, servers.enter(serve_app(build_simulator_app(state))).url)


@contextmanager
def relay_pod(podman: Podman, image: str, upstream: Upstream, tmp_path: Path) -> Iterator[RelayContainer]:
    """The relay as the chart's Deployment runs it, in real mode against `upstream`, with its
    pool Secret mounted from tmp_path/pool (write it with write_pool_file) and the image's own
    CMD: only GPTOMNI_HOST/GPTOMNI_PORT stand in for the chart's `--host 0.0.0.0 --port 8000`."""
    documents = render({"relay": {"upstreamUrl": upstream.url, "apiKeys": {"keys": [API_KEY]}}})
    pod = RenderedPod.of(documents, "relay")
    keys_secret = next(v["secret"]["secretName"] for v in pod.spec["volumes"] if v["name"] == "api-keys")
    secret_dirs = {
        "gptomni-credentials": tmp_path / "pool",
        keys_secret: write_secret_dir(tmp_path / "api-keys", secret_data(documents, keys_secret)),
    }
    with run_container(podman, image, flags=pod.run_flags(secret_dirs)) as relay:
        yield relay


def client_for(relay: RelayContainer, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{relay.url}/v1", api_key=api_key, max_retries=0, timeout=30)


def ask(client: openai.OpenAI, text: str = "ping") -> str:
    answer = client.chat.completions.create(model="gptomni", messages=[{"role": "user", "content": text}])
    return answer.choices[0].message.content or ""


def pool_ids(relay: RelayContainer) -> list[str]:
    """The credential ids in the relay's pool, from its metrics port."""
    metrics = httpx.get(f"{relay.metrics_url}/metrics", timeout=5).text
    return sorted(set(re.findall(r'^gptomni_credential_state\{credential="([^"]+)",state="[^"]+"\} 1\.0$', metrics,
                                 re.MULTILINE)))


# --- demo mode, under the chart's securityContext ----------------------------------------


@pytest.fixture(scope="module")
def demo_relay(podman: Podman, image: str) -> Iterator[RelayContainer]:
    pod = RenderedPod.of(render({}), "relay")
    flags = [*pod.security_flags(), *pod.volume_flags({})]
    with run_container(podman, image, "gptomni-relay", "--demo", flags=flags,
                       env={"GPTOMNI_DEMO_TOKEN_DELAY_SECONDS": "0"}) as relay:
        yield relay


def test_demo_mode_serves_healthz_and_the_openai_sdk(demo_relay: RelayContainer) -> None:
    assert httpx.get(f"{demo_relay.url}/healthz", timeout=5).json() == {"status": "ok"}
    with client_for(demo_relay, DEMO_API_KEY) as client:
        assert ask(client) == "Hello from the GPT-Omni simulator! You said: ping"
        stream = client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": "pong"}], stream=True)
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).endswith("You said: pong")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_runs_as_the_chart_asks_uid_10001_read_only_root_no_capabilities(demo_relay: RelayContainer) -> None:
    status = dict(line.split(":\t", 1) for line in demo_relay.exec("cat", "/proc/1/status").stdout.splitlines())
    assert status["Uid"].split() == ["10001"] * 4 and status["Gid"].split() == ["10001"] * 4
    assert "10001" in status["Groups"].split()  # fsGroup
    for capability_set in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capability_set], 16) == 0, capability_set
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == "2"  # RuntimeDefault: a seccomp filter is on
    # The relay's user can write nowhere but the /tmp emptyDir.
    probe = demo_relay.exec("python", "-c", """
import errno
for path in ("/opt/gptomni/probe", "/probe", "/etc/probe", "/tmp/probe"):
    try:
        open(path, "w").close()
        print(path, "written")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
""")
    assert probe.stdout.split("\n")[:4] == [
        "/opt/gptomni/probe EROFS", "/probe EROFS", "/etc/probe EROFS", "/tmp/probe written"], probe.stderr


def test_the_operator_entry_point_starts(podman: Podman, image: str) -> None:
    pod = RenderedPod.of(render({}), "operator")
    result = podman("run", "--rm", "--network", "none", *COMMON_RUN_FLAGS, *pod.security_flags(),
                    image, "gptomni-operator", "--help", timeout=60)
    assert result.stdout.startswith("usage: gptomni-operator")


# --- real mode against the simulator on the host, as the chart's Deployment --------------


def test_real_mode_on_gptomni_port_with_the_pool_from_the_mounted_secret(
    podman: Podman, image: str, upstream: Upstream, tmp_path: Path
) -> None:
    write_pool_file(tmp_path / "pool", [{"id": "team-a/alice", "cookie": ALICE}])
    with relay_pod(podman, image, upstream, tmp_path) as relay, client_for(relay) as client:
        # relay_pod runs the image's own CMD: it listens where GPTOMNI_PORT says (ready came
        # from there), and its HEALTHCHECK asks there too.
        assert podman("healthcheck", "run", relay.name, check=False).returncode == 0
        assert ask(client, "hello") == "Hello from the GPT-Omni simulator! You said: hello"
        stream = client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": "again"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream).endswith("You said: again")
        assert [chat.session for chat in upstream.state.received] == [ALICE, ALICE]
        assert pool_ids(relay) == ["team-a/alice"]
        with client_for(relay, "sk-not-the-key-from-the-secret") as stranger, pytest.raises(openai.AuthenticationError):
            ask(stranger)


def test_a_kubelet_style_data_swap_replaces_the_pool_without_a_restart(
    podman: Podman, image: str, upstream: Upstream, tmp_path: Path
) -> None:
    write_pool_file(tmp_path / "pool", [{"id": "team-a/alice", "cookie": ALICE}])
    with relay_pod(podman, image, upstream, tmp_path) as relay, client_for(relay) as client:
        ask(client)
        write_pool_file(tmp_path / "pool", [{"id": "team-b/bob", "cookie": BOB}])  # new dir, `..data` renamed
        wait_until(lambda: pool_ids(relay) == ["team-b/bob"], WAIT, 0.2, "the pool reloaded")
        ask(client)
        assert [chat.session for chat in upstream.state.received] == [ALICE, BOB]


def test_sigterm_drains_an_open_stream_then_exits_0(
    podman: Podman, image: str, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.state.default = Behaviour(token_delay=0.1, answer_words=40)  # ~4 s of answer
    write_pool_file(tmp_path / "pool", [{"id": "team-a/alice", "cookie": ALICE}])
    with relay_pod(podman, image, upstream, tmp_path) as relay, client_for(relay) as client:
        pod = RenderedPod.of(render({}), "relay")
        grace = float(pod.env("GPTOMNI_SHUTDOWN_GRACE_SECONDS"))
        stream = iter(client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": "long"}], stream=True))
        text = ""
        while not text:
            text += next(stream).choices[0].delta.content or ""
        # SIGTERM, then SIGKILL after what kubelet would leave (the grace period after preStop).
        stopped = time.monotonic()
        stop = threading.Thread(target=podman, args=("stop", "--time", str(pod.stop_timeout), relay.name),
                                kwargs={"timeout": pod.stop_timeout + 30, "check": False})
        stop.start()
        # The listener closes at once: new connections are refused while the stream goes on.
        def refused() -> bool:
            try:
                httpx.get(f"{relay.url}/healthz", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        wait_until(refused, WAIT, what="new connections refused after SIGTERM")
        assert upstream.state.active == 1
        chunks = list(stream)
        exit_code = relay.process.wait(timeout=grace + 10)
        elapsed = time.monotonic() - stopped
        stop.join(30)
    text += "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == default_answer("", 40) and chunks[-1].choices[0].finish_reason == "stop"
    assert exit_code == 0, relay.output()  # not 137: no SIGKILL was needed
    assert elapsed < grace, f"{elapsed:.1f} s after SIGTERM"


# --- what the image holds ----------------------------------------------------------------


@dataclass(frozen=True)
class ImageLayers:
    config: dict[str, Any]
    base: list[list[str]]  # file names per layer, the base image's
    ours: list[list[str]]  # the layers this Dockerfile adds
    ours_bytes: int
    total_bytes: int


@pytest.fixture(scope="module")
def layers(podman: Podman, image: str, tmp_path_factory: pytest.TempPathFactory) -> ImageLayers:
    """Every file of every layer, from `podman save` (so files deleted by a later layer count)."""
    saved = tmp_path_factory.mktemp("image") / "saved"
    podman("save", "--quiet", "--format", "docker-dir", "-o", str(saved), image, timeout=180)
    manifest = json.loads((saved / "manifest.json").read_text())
    config = json.loads((saved / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    [base_inspect] = json.loads(podman("image", "inspect", BASE_IMAGE).stdout)
    base_layers = set(base_inspect["RootFS"]["Layers"])
    base: list[list[str]] = []
    ours: list[list[str]] = []
    ours_bytes = 0
    for layer in manifest["layers"]:
        with tarfile.open(saved / layer["digest"].removeprefix("sha256:")) as archive:
            names = [name.removeprefix("./").rstrip("/") for name in archive.getnames()]
        if layer["digest"] in base_layers:
            base.append(names)
        else:
            ours.append(names)
            ours_bytes += layer["size"]
    [inspect] = json.loads(podman("image", "inspect", image).stdout)
    return ImageLayers(config, base, ours, ours_bytes, inspect["Size"])


def test_the_image_config_is_the_dockerfiles(layers: ImageLayers) -> None:
    config = layers.config["config"]
    assert config["User"] == "10001:10001"  # numeric, so kubelet can check runAsNonRoot
    assert config["Cmd"] == ["gptomni-relay"]  # no --port: GPTOMNI_PORT decides
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "gptomni_relay.healthcheck"]
    assert list(config["ExposedPorts"]) == ["8000/tcp"]


# Our layers may hold the venv and the user's entry in the account files, nothing else.
OUR_FILES = re.compile(r"(opt|opt/gptomni(/.*)?|etc|etc/(passwd|group|shadow|gshadow)-?|etc/\.pwd\.lock|run"
                       r"|var|var/log|var/log/(lastlog|faillog))")
BUILD_TOOLS = re.compile(r"(usr/|usr/local/)?s?bin/(gcc|g\+\+|cc|c\+\+|cpp|clang|make|ld|as|x86_64-linux-gnu-gcc)"
                         r"(-[0-9.]+)?|usr/lib/gcc/.*/cc1")
CACHES = re.compile(r"(.*/)?\.cache(/.*)?|var/cache/apt/archives/.+\.deb|var/lib/apt/lists/.+|src(/.*)?")


def test_no_build_tools_caches_or_test_files_in_the_layers(layers: ImageLayers) -> None:
    ours = [name for names in layers.ours for name in names]
    assert ours and not [name for name in ours if not OUR_FILES.fullmatch(name)]
    every = ours + [name for names in layers.base for name in names]
    assert not [name for name in every if BUILD_TOOLS.fullmatch(name)]
    assert not [name for name in every if CACHES.fullmatch(name)]
    site_packages = "opt/gptomni/lib/python3.11/site-packages/"
    installed = {name.removeprefix(site_packages) for name in ours if name.startswith(site_packages)}
    assert not {"tests", "bench", "docs", "conftest.py"} & installed
    # Our packages, exactly as the source tree has them: every module, no test or stray file.
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, source in package_dirs.items():
        expected = {f"{package}/{path.relative_to(REPO / source)}" for path in (REPO / source).rglob("*.py")
                    if "__pycache__" not in path.parts}
        shipped = {name for name in installed if name.startswith(f"{package}/") and name.endswith(".py")}
        assert shipped == expected, package


def recorded_budget(label: str) -> tuple[float, float]:
    """(measured, budget) in MB from the image size table in docs/deploy.md."""
    text = (REPO / "docs" / "deploy.md").read_text()
    found = re.search(rf"^\| {re.escape(label)} \| ([\d.]+) MB \| ([\d.]+) MB \|$", text, re.MULTILINE)
    assert found, f"docs/deploy.md has no size row {label!r}"
    return float(found[1]), float(found[2])


def test_the_image_size_stays_within_the_budget_in_docs_deploy(layers: ImageLayers) -> None:
    _, ours_budget = recorded_budget("layers the Dockerfile adds")
    _, total_budget = recorded_budget("whole image (stand-in base)")
    assert layers.ours_bytes / 1e6 <= ours_budget, f"{layers.ours_bytes / 1e6:.0f} MB"
    assert layers.total_bytes / 1e6 <= total_budget, f"{layers.total_bytes / 1e6:.0f} MB"

