#!/usr/bin/env python3
"""The test cluster's DNS data: keeps a hosts file of `<service>.<namespace>.svc.cluster.local`
-> ClusterIP (a headless Service: its ready endpoint addresses) for dnsmasq, and sends
dnsmasq SIGHUP when it changes. CoreDNS is not packaged in Debian and no image registry is
reachable, so dnsmasq (no upstream server: any other name is refused) fed from the API
stands in. Polls the API server every second; stdlib only (runs with the system Python).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

DOMAIN = "cluster.local"


class Api:
    def __init__(self, kubeconfig: Path) -> None:
        # The kubeconfig start.sh writes: server, certificate-authority and token in quotes.
        text = kubeconfig.read_text()
        field = lambda name: text.split(f'{name}: "', 1)[1].split('"', 1)[0]  # noqa: E731
        self.server, self.token = field("server"), field("token")
        self.context = ssl.create_default_context(cafile=field("certificate-authority"))

    def items(self, path: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self.context, timeout=5) as response:
            return json.load(response)["items"]


def hosts(api: Api) -> str:
    lines: list[str] = []
    endpoints: dict[tuple[str, str], dict[str, Any]] | None = None
    for service in api.items("/api/v1/services"):
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        fqdn = f"{name}.{namespace}.svc.{DOMAIN}"
        cluster_ip = service["spec"].get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            lines.append(f"{cluster_ip} {fqdn}")
        elif cluster_ip == "None":
            if endpoints is None:
                endpoints = {(e["metadata"]["namespace"], e["metadata"]["name"]): e
                             for e in api.items("/api/v1/endpoints")}
            for subset in endpoints.get((namespace, name), {}).get("subsets") or []:
                lines.extend(f"{address['ip']} {fqdn}" for address in subset.get("addresses") or [])
    return "\n".join(sorted(lines)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--hosts", type=Path, required=True)
    parser.add_argument("--dnsmasq-pid", type=int, required=True)
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    api, last = Api(arguments.kubeconfig), None
    while True:
        try:
            text = hosts(api)
            if text != last:
                arguments.hosts.with_suffix(".tmp").write_text(text)
                os.replace(arguments.hosts.with_suffix(".tmp"), arguments.hosts)
                os.kill(arguments.dnsmasq_pid, signal.SIGHUP)
                last = text
        except (OSError, ValueError, KeyError) as error:
            print(f"dns_sync: {error}", file=sys.stderr, flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
