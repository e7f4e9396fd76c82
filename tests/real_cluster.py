"""The cluster tier's cluster: a real single-node Kubernetes v1.20.2 on this machine.

scripts/cluster/start.sh starts it (binaries from scripts/provision/10-kube-apiserver.sh and
50-cluster.sh), scripts/cluster/stop.sh tears it down, and `leftovers()` proves that
nothing of it stayed on the machine. The project's image, built by the container tier's
build, is imported into the cluster's containerd under a tag naming its image id, so a
warm run imports nothing. Everything is reached the way a user reaches it: kubectl for
objects, Helm's library (helm-python-sdk) for the release, the relay's Service address
for OpenAI clients.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.container_engine import Podman, build_image, podman_env
from tests.system_parts import REPO, missing, require_binary

PROVISION_STEP = "50-cluster.sh"
BIN = Path(os.environ.get("GPTOMNI_CLUSTER_CACHE", "/var/cache/gptomni/cluster-v1.20.2")) / "bin"
APISERVER_BIN = Path(os.environ.get("GPTOMNI_KUBE_CACHE", "/var/cache/gptomni/kube-apiserver-v1.20.2")) / "bin"
RUN = Path(os.environ.get("GPTOMNI_CLUSTER_RUN", "/run/gptomni-cluster"))
SCRIPTS = REPO / "scripts" / "cluster"
NODE_IP = "10.244.0.1"
# One cluster per machine at a time: the bridge, the node's ports and containerd are shared.
LOCK = Path("/tmp/gptomni-cluster.lock")
IMAGE_REPOSITORY = "localhost/gptomni"
# What a probe of the cluster may raise while it settles (kubectl failing, a field not there yet).
SETTLING = (subprocess.SubprocessError, OSError, KeyError, ValueError)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    kubectl_binary: Path

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}", *args],
                                input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def apply(self, *documents: dict[str, Any]) -> None:
        # YAML, not JSON: kubectl 1.20 panics on a multi-document JSON stream over 4 KiB.
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        scope = [f"--namespace={namespace}"] if namespace else []
        result = self.kubectl("get", kind, name, *scope, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {result.stderr}")
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def items(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, f"--namespace={namespace}", "-o", "json"]
        if selector:
            args.append(f"--selector={selector}")
        listed: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return listed

    def watch(self, kind: str, name: str, namespace: str) -> Watch:
        """`kubectl get --watch` of one object, its events collected until `stop()`."""
        process = subprocess.Popen(
            [str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}", "get", kind, name, f"--namespace={namespace}",
             "--watch", "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return Watch(process)

    def logs(self, namespace: str, selector: str) -> str:
        return self.kubectl("logs", f"--namespace={namespace}", f"--selector={selector}", "--tail=200",
                            "--all-containers", check=False).stdout


@dataclass
class Watch:
    process: subprocess.Popen[str]

    def stop(self) -> list[dict[str, Any]]:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        decoder, events, position = json.JSONDecoder(), [], 0
        while position < len(output.rstrip()):
            event, end = decoder.raw_decode(output, position)
            events.append(event)
            position = end
            while position < len(output) and output[position].isspace():
                position += 1
        return events


def leftovers() -> list[str]:
    """What a stopped cluster left on the machine (nothing, when stop.sh did its job)."""
    found: list[str] = []
    if Path("/sys/class/net/cni0").exists():
        found.append("bridge cni0")
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, timeout=30).stdout
        found += [f"iptables {table}: {line}" for line in rules.splitlines()
                  if any(mark in line for mark in ("KUBE-", "CNI-", "GPTOMNI-CLUSTER-"))][:5]
    mounts = Path("/proc/mounts").read_text().split("\n")
    found += [f"mount {line.split()[1]}" for line in mounts if line and line.split()[1].startswith(
        ("/var/lib/kubelet", "/run/containerd/", "/var/lib/containerd/", "/run/netns/cni-"))]
    found += [f"netns {path}" for path in Path("/run/netns").glob("cni-*")] if Path("/run/netns").exists() else []
    ours = (str(BIN), str(APISERVER_BIN), str(RUN), "containerd-shim-runc-v2")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in args for mark in ours) and "pytest" not in args:
            found.append(f"process {cmdline.parent.name}: {args[:120]}")
    return found


def _run_script(name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPTS / name)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GPTOMNI_CLUSTER_RUN": str(RUN)})


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A fresh cluster for the session; torn down (and proven gone) at its end."""
    if os.geteuid() != 0:
        missing("root (the cluster tier runs a kubelet)", PROVISION_STEP)
    for binary in ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler", "kubectl", "pause"):
        require_binary(binary, PROVISION_STEP, BIN / binary)
    require_binary("kube-apiserver", "10-kube-apiserver.sh", APISERVER_BIN / "kube-apiserver")
    for tool in ("containerd", "ctr", "dnsmasq", "iptables", "conntrack"):
        require_binary(tool, PROVISION_STEP)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = _run_script("start.sh", timeout=300)
        try:
            assert started.returncode == 0, f"cluster start failed:\n{started.stderr[-6000:]}"
            yield Cluster(RUN / "admin.kubeconfig", BIN / "kubectl")
        finally:
            stopped = _run_script("stop.sh", timeout=300)
            assert stopped.returncode == 0, f"cluster stop failed:\n{stopped.stderr[-4000:]}"
            left = leftovers()
            assert not left, f"the cluster left these on the machine: {left}"


def ctr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctr", "--namespace=k8s.io", *args], capture_output=True, text=True, timeout=timeout,
                          check=True)


def import_image(podman: Podman) -> str:
    """The container tier's image, in the cluster's containerd as localhost/gptomni:<image id>
    (imported once per build: images persist in /var/lib/containerd). Returns the tag."""
    built = build_image(podman)
    image_id = podman("image", "inspect", "--format", "{{.Id}}", built).stdout.strip()
    tag = image_id[:16]
    reference = f"{IMAGE_REPOSITORY}:{tag}"
    if reference in ctr("images", "ls", "-q").stdout.split():
        return tag
    podman("tag", built, reference)
    with tempfile.TemporaryDirectory(prefix="gptomni-image-") as directory:
        archive = Path(directory) / "image.tar"
        subprocess.run([str(podman.binary), "save", "--format", "oci-archive", "-o", str(archive), reference],
                       env=podman_env(), capture_output=True, text=True, timeout=300, check=True)
        # --base-name: ctr 1.6 otherwise drops a ref.name that is a full reference.
        ctr("images", "import", f"--base-name={IMAGE_REPOSITORY}", str(archive))
    assert reference in ctr("images", "ls", "-q").stdout.split(), f"{reference} not in containerd after import"
    return tag
