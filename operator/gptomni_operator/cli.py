"""`gptomni-operator` / `python -m gptomni_operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import asyncio
import sys

import kopf
from pydantic import ValidationError

from gptomni_common.logging_setup import configure_logging
from gptomni_operator.handlers import register
from gptomni_operator.settings import OperatorSettings
from gptomni_operator.state import OperatorState


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gptomni-operator", description="Health-checks GPTOmniCredential cookies.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0: off)")
    parser.add_argument("--peering", help="kopf peering name: one active operator among replicas")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
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
    configure_logging(settings.log_level, "json")
    registry = kopf.OperatorRegistry()
    register(registry, OperatorState(settings))
    asyncio.run(kopf.operator(
        registry=registry,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=not settings.peering,
        liveness_endpoint=args.liveness,
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
