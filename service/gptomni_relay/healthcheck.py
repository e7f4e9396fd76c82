"""`python -m gptomni_relay.healthcheck`: the image's HEALTHCHECK.

Asks `/healthz` on the address the relay listens on by its environment (`GPTOMNI_HOST`,
`GPTOMNI_PORT`, with the relay's own defaults), so that setting `GPTOMNI_PORT` moves the
health check along with the server. A `--port` given on the command line is not seen here;
Kubernetes ignores HEALTHCHECK anyway and uses the chart's probes. Exit 0: healthy.
"""

from __future__ import annotations

import sys
import urllib.request

from gptomni_relay.settings import RelaySettings

WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def healthz_url(settings: RelaySettings) -> str:
    host = WILDCARDS.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/healthz"


def main() -> int:
    try:
        with urllib.request.urlopen(healthz_url(RelaySettings()), timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"gptomni-relay health check failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
