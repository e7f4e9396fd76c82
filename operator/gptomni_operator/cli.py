"""`gptomni-operator` / `python -m gptomni_operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

import kopf
from pydantic import ValidationError

from gptomni_common.logging_setup import configure_logging
from gptomni_common.settings_help import add_help_and_version
from gptomni_operator.handlers import register
from gptomni_operator.key_handlers import register_api_keys
from gptomni_operator.memo import CredentialMemo
from gptomni_operator.settings import OperatorSettings
from gptomni_operator.state import OperatorState
from gptomni_operator.uninstall import release_finalizers

# kopf logs each run of a handler at INFO. These two run on every event of every Secret
# and credential it watches, replays included: a line each would drown the log.
_ROUTINE = frozenset(f"Handler '{handler}' succeeded." for handler in (
    "secret_changed", "credential_changed", "api_key_changed", "api_key_secret_changed"))


def quiet_routine_handlers(record: logging.LogRecord) -> bool:
    return not (record.levelno <= logging.INFO and record.getMessage() in _ROUTINE)


# Where the kubelet mounts a pod's ServiceAccount token (kopf's in-cluster login reads it).
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def missing_kubernetes_credentials() -> str | None:
    """Why the operator cannot log in at all, or None. kopf would otherwise retry its login
    forever, a traceback-laden warning each time, instead of telling the user once."""
    if SERVICE_ACCOUNT_TOKEN.is_file():
        return None
    named = os.environ.get("KUBECONFIG", "")
    candidates = [Path(path).expanduser() for path in named.split(os.pathsep) if path] or [Path("~/.kube/config").expanduser()]
    if any(path.is_file() for path in candidates):
        return None
    where = f"KUBECONFIG={named}" if named else "~/.kube/config"
    return (f"no Kubernetes credentials: not in a pod (no {SERVICE_ACCOUNT_TOKEN}) and no kubeconfig "
            f"({where} not found)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gptomni-operator", description="Health-checks GPTOmniCredential cookies; publishes GPTOmniAPIKeys.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0: off)")
    parser.add_argument("--peering", help="kopf peering name: one active operator among replicas")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    parser.add_argument("--release-finalizers", action="store_true",
                        help="take the operator's finalizer off every watched credential and exit "
                             "(the chart's post-delete hook: nothing hangs once the operator is gone)")
    parser.add_argument("--after-pods-gone", metavar="NAMESPACE/SELECTOR",
                        help="with --release-finalizers: first wait until no pod matches (the operator's)")
    add_help_and_version(parser, OperatorSettings)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["namespaces"] = args.namespace
    elif args.all_namespaces:
        overrides["namespaces"] = []
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    if args.peering is not None:
        overrides["peering"] = args.peering
    try:
        settings = OperatorSettings(**overrides)
    except ValidationError as exc:
        print(f"gptomni-operator: configuration error: {exc}", file=sys.stderr)
        return 2
    if (problem := missing_kubernetes_credentials()) is not None:
        print(f"gptomni-operator: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, "json")
    if args.release_finalizers:
        pods = tuple(args.after_pods_gone.split("/", 1)) if args.after_pods_gone else None
        released = asyncio.run(release_finalizers(settings.namespaces, pods))  # type: ignore[arg-type]
        logging.getLogger("gptomni_operator").info("finalizers released", extra={"credentials": released})
        return 0
    logging.getLogger("kopf.objects").addFilter(quiet_routine_handlers)
    registry = kopf.OperatorRegistry()
    state = OperatorState(settings)
    register(registry, state)
    register_api_keys(registry, state)
    try:
        asyncio.run(kopf.operator(
            registry=registry,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=not settings.peering,
            liveness_endpoint=args.liveness,
            memo=CredentialMemo(),
        ))
    except Exception as exc:  # kopf has logged the cause (e.g. a failed start-up activity)
        logging.getLogger("gptomni_operator").error("operator stopped", extra={"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
