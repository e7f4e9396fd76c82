"""The container tier's engine: Debian's podman, rootful, running the image as kubelet runs a pod.

scripts/provision/30-podman.sh installs podman and a local stand-in for the base image
(no registry is reachable here); scripts/build-image.sh builds the Dockerfile unchanged.

Containers share the host's network namespace, so every request the tests make goes to
127.0.0.1 and the relay reaches the host's simulator there too: no bridge, no port
forwarding, no address but loopback. Each container listens on free ports given by
`GPTOMNI_PORT` and `GPTOMNI_METRICS_PORT` (with `GPTOMNI_HOST=127.0.0.1`), which is also
how the image's CMD is proven to honour them.

What Kubernetes would apply to the container comes from the Deployment the chart renders
(`RenderedPod`): its securityContext, environment and volumes are translated to podman
flags one field at a time, and a field with no translation fails the test, so the chart
cannot grow a setting this tier silently drops.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chart_render import by_kind
from tests.processes import RelayProcess, end_process, free_port, wait_ready
from tests.system_parts import REPO, missing, require_binary

PROVISION_STEP = "30-podman.sh"
CONTAINERS_CONF = REPO / "scripts" / "podman" / "containers.conf"
BASE_IMAGE = "docker.io/library/python:3.11-slim"
IMAGE = "localhost/gptomni:test"
# The image's HEALTHCHECK needs systemd timers to run by itself; `podman healthcheck run`
# still runs it on demand.
COMMON_RUN_FLAGS = ("--health-interval", "disable")


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


@dataclass(frozen=True)
class Podman:
    binary: Path

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), *args], env=podman_env(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result


def find_podman() -> Podman:
    return Podman(require_binary("podman", PROVISION_STEP))


def build_image(podman: Podman) -> str:
    """scripts/build-image.sh, as a developer runs it (cold ~1 min, warm ~8 s)."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        missing(f"the base image {BASE_IMAGE} (here a local stand-in)", PROVISION_STEP)
    result = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh"), IMAGE], env=podman_env(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, f"image build failed:\n{result.stdout}{result.stderr}"
    return IMAGE


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    raise ValueError(f"no translation for the quantity {quantity!r}")


def security_flags(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """podman flags for a pod's and its container's securityContext (the container's fields win)."""
    merged = {**pod, **container}
    flags: list[str] = []
    user, group = merged.pop("runAsUser", None), merged.pop("runAsGroup", None)
    if user is not None:
        flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if merged.pop("runAsNonRoot", False) and not user:
        # kubelet refuses to start such a container; the image's USER is not consulted here.
        raise ValueError("runAsNonRoot needs a non-zero runAsUser for this translation")
    if (fs_group := merged.pop("fsGroup", None)) is not None:
        flags += ["--group-add", str(fs_group)]  # kubelet adds it as a supplementary group
    for extra_group in merged.pop("supplementalGroups", []):
        flags += ["--group-add", str(extra_group)]
    seccomp = merged.pop("seccompProfile", {"type": "RuntimeDefault"})
    if seccomp["type"] == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif seccomp["type"] != "RuntimeDefault":  # RuntimeDefault: podman's default profile
        raise ValueError(f"no translation for seccompProfile {seccomp}")
    if merged.pop("allowPrivilegeEscalation", True) is False:
        flags += ["--security-opt", "no-new-privileges"]
    if merged.pop("readOnlyRootFilesystem", False):
        # podman would otherwise mount writable tmpfs on /tmp, /run and /var/tmp; a pod gets none.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if merged.pop("privileged", False):
        flags += ["--privileged"]
    capabilities = merged.pop("capabilities", {})
    flags += [f"--cap-drop={name.lower()}" for name in capabilities.pop("drop", [])]
    flags += [f"--cap-add={name.lower()}" for name in capabilities.pop("add", [])]
    unknown = sorted(merged) + [f"capabilities.{key}" for key in capabilities]
    if unknown:
        raise ValueError(f"no podman translation for securityContext fields {unknown}")
    return flags


@dataclass(frozen=True)
class RenderedPod:
    """One Deployment's pod as the chart renders it, and the podman flags that reproduce it."""

    spec: dict[str, Any]
    container: dict[str, Any]

    @classmethod
    def of(cls, documents: list[dict[str, Any]], component: str) -> RenderedPod:
        [deployment] = [doc for doc in by_kind(documents, "Deployment")
                        if doc["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        spec = deployment["spec"]["template"]["spec"]
        [container] = spec["containers"]
        return cls(spec, container)

    def env(self, name: str) -> str:
        [value] = [item["value"] for item in self.container["env"] if item["name"] == name]
        return value

    @property
    def stop_timeout(self) -> int:
        """What kubelet leaves between SIGTERM and SIGKILL: the grace period after preStop."""
        pre_stop = self.container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        return int(self.spec["terminationGracePeriodSeconds"]) - int(pre_stop)

    def security_flags(self) -> list[str]:
        return security_flags(self.spec.get("securityContext", {}), self.container.get("securityContext", {}))

    def volume_flags(self, secret_dirs: Mapping[str, Path]) -> list[str]:
        """Secret volumes from host directories (by Secret name; those not given are left out,
        as an absent optional Secret is), emptyDir volumes as tmpfs of their size limit."""
        volumes = {volume["name"]: volume for volume in self.spec.get("volumes", [])}
        flags: list[str] = []
        for mount in self.container.get("volumeMounts", []):
            if "subPath" in mount:
                raise ValueError(f"subPath mounts never see Secret updates: {mount}")
            volume, target = volumes[mount["name"]], mount["mountPath"]
            if "secret" in volume:
                source = secret_dirs.get(volume["secret"]["secretName"])
                if source is not None:
                    flags += ["--volume", f"{source}:{target}:{'ro' if mount.get('readOnly') else 'rw'}"]
            elif "emptyDir" in volume:
                size = quantity_bytes(volume["emptyDir"].get("sizeLimit", "1Gi"))
                flags += ["--tmpfs", f"{target}:rw,exec,size={size},mode=1777"]
            else:
                raise ValueError(f"no podman translation for the volume {volume}")
        return flags

    def env_flags(self) -> list[str]:
        flags: list[str] = []
        for item in self.container.get("env", []):
            if "value" not in item:
                raise ValueError(f"no podman translation for the env entry {item}")
            flags.append(f"--env={item['name']}={item['value']}")
        return flags

    def run_flags(self, secret_dirs: Mapping[str, Path]) -> list[str]:
        return [*self.security_flags(), *self.volume_flags(secret_dirs), *self.env_flags()]


def secret_data(documents: list[dict[str, Any]], name: str) -> dict[str, str]:
    [secret] = [doc for doc in by_kind(documents, "Secret") if doc["metadata"]["name"] == name]
    data = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def write_secret_dir(directory: Path, data: Mapping[str, str]) -> Path:
    """A Secret volume's files, readable by the pod's user (kubelet's default mode 0644)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    for key, value in data.items():
        (directory / key).write_text(value)
        (directory / key).chmod(0o644)
    return directory


@dataclass
class RelayContainer(RelayProcess):
    """The relay in a container; `process` is the foreground `podman run`, whose exit code
    is the container's."""

    name: str
    podman: Podman

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", self.name, *command, check=False)


@contextmanager
def run_container(podman: Podman, image: str, *command: str, flags: list[str] | None = None,
                  env: Mapping[str, str] | None = None, ready_timeout: float = 60) -> Iterator[RelayContainer]:
    """`podman run` in the host's network namespace on free ports (API and metrics); ready
    once /healthz answers."""
    port, metrics_port = free_port(), free_port()
    name = f"gptomni-test-{secrets.token_hex(4)}"
    settings = {"GPTOMNI_HOST": "127.0.0.1", "GPTOMNI_PORT": str(port), "GPTOMNI_METRICS_PORT": str(metrics_port),
                **(env or {})}
    log = tempfile.NamedTemporaryFile("w+", prefix=f"{name}-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        [str(podman.binary), "run", "--rm", "--name", name, "--network", "host", *COMMON_RUN_FLAGS,
         *(flags or []), *(f"--env={key}={value}" for key, value in settings.items()), image, *command],
        env=podman_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log.name, timeout=ready_timeout)
        yield RelayContainer(process, port, metrics_port, log, name, podman)
    finally:
        end_process(process, lambda: podman("rm", "--force", "--ignore", "--time", "0", name, check=False))
        log.close()
