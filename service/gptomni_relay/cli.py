"""`gptomni-relay` / `python -m gptomni_relay`: run the relay under uvicorn.

`--demo` starts the built-in GPT-Omni simulator on a free loopback port inside the same
process and points the relay at it, so the API can be tried with no cookies, no
cluster and no network.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack

from pydantic import ValidationError
from pydantic_settings import SettingsError

from gptomni_common.logging_setup import configure_logging
from gptomni_common.redaction import describe_validation_error
from gptomni_common.settings_help import add_help_and_version
from gptomni_relay.edge.http_guard import HttpLimits
from gptomni_relay.edge.server import bind_socket, main_server, serve_app
from gptomni_relay.gc_tuning import collect_young_objects_regularly, tune_gc_for_serving
from gptomni_relay.settings import DEMO_API_KEY, RelaySettings
from gptomni_relay.state import ConfigurationError, resolve_api_keys

log = logging.getLogger("gptomni_relay")

DEMO_COOKIES = ["demo-session=alpha", "demo-session=beta", "demo-session=gamma"]


def http_limits(settings: RelaySettings) -> HttpLimits:
    """What one client connection may make the relay hold (http_guard.py), as configured."""
    return HttpLimits(settings.max_header_bytes, settings.max_header_count, settings.max_body_bytes,
                      settings.header_timeout_seconds, settings.body_timeout_seconds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gptomni-relay", description="OpenAI-compatible relay for GPT-Omni.")
    parser.add_argument("--host", help="address to listen on (env GPTOMNI_HOST, default 0.0.0.0; demo 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (env GPTOMNI_PORT, default 8000)")
    parser.add_argument("--demo", action="store_true", help="serve from the built-in simulated GPT-Omni")
    add_help_and_version(parser, RelaySettings)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> RelaySettings:
    overrides: dict[str, object] = {}
    if args.demo:
        overrides["demo"] = True
    if args.port is not None:
        overrides["port"] = args.port
    if args.host:
        overrides["host"] = args.host
    settings = RelaySettings(**overrides)
    if settings.demo:  # --demo or GPTOMNI_DEMO=true
        local: dict[str, object] = {}
        if not args.host and "GPTOMNI_HOST" not in os.environ:
            local["host"] = "127.0.0.1"  # the demo key is public: keep the demo off the network
        if "GPTOMNI_METRICS_PORT" not in os.environ:
            local["metrics_port"] = 0  # never collide with a local Prometheus
        settings = settings.model_copy(update=local)
    return settings


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def run(settings: RelaySettings, sock: socket.socket, metrics_sock: socket.socket) -> None:
    from gptomni_relay.app import create_app
    from gptomni_relay.probes import create_metrics_app

    port = sock.getsockname()[1]
    async with AsyncExitStack() as stack:
        if settings.demo:
            from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app

            state = SimulatorState(default=Behaviour(
                token_delay=settings.demo_token_delay_seconds,
                first_byte_delay=settings.demo_first_byte_delay_seconds,
                answer_words=settings.demo_answer_words,
            ))
            simulator = await stack.enter_async_context(serve_app(build_simulator_app(state), quiet=True))
            settings = settings.model_copy(update={
                "upstream_url": simulator.url,
                "credentials": settings.credentials or DEMO_COOKIES,
                "default_max_concurrency": max(settings.default_max_concurrency, 512),
            })
            log.info("demo mode: simulated GPT-Omni upstream", extra={"upstream": simulator.url})
        app = create_app(settings)
        metrics = await stack.enter_async_context(
            serve_app(create_metrics_app(app.state.relay), sock=metrics_sock, quiet=True, lifespan="off",
                      limits=http_limits(settings)))
        log.info("relay listening", extra={"url": f"http://{settings.host}:{port}/v1", "demo": settings.demo,
                                           "metrics": f"{metrics.url}/metrics", "upstream": settings.upstream_url})
        if settings.demo:
            # The demo key is public; a key of the user's own is never printed.
            key = DEMO_API_KEY if not settings.api_keys and not settings.api_keys_file else "(from GPTOMNI_API_KEYS)"
            print(
                f"\n  gptomni relay (demo) on http://{settings.host}:{port}/v1   API key: {key}\n",
                file=sys.stderr, flush=True,
            )
        tune_gc_for_serving()
        young_collections = asyncio.create_task(collect_young_objects_regularly())
        stack.callback(young_collections.cancel)
        server = main_server(
            app,
            http_limits(settings),
            # Open streams run on for the grace period, then are cancelled (closing upstream).
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            timeout_keep_alive=settings.keep_alive_timeout_seconds,
        )
        await server.serve(sockets=[sock])


def _fail(message: str) -> int:
    print(f"gptomni-relay: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        # Never pydantic's own text: it quotes the input, and the input may be a cookie.
        return _fail(f"configuration error: {describe_validation_error(exc)}")
    except SettingsError as exc:  # a variable that is not even JSON; the message names it only
        return _fail(f"configuration error: {exc}")
    configure_logging(settings.log_level, settings.log_format)
    try:
        resolve_api_keys(settings)  # before any port is taken: a refusal must not need one
    except ConfigurationError as exc:
        return _fail(f"configuration error: {exc}")
    sockets: list[socket.socket] = []
    try:
        # Bound before anything starts, so a busy port is one clear line, not a traceback.
        for port in (settings.port, settings.metrics_port):
            try:
                sockets.append(bind_socket(settings.host, port))
            except OSError as exc:
                return _fail(f"cannot listen on {settings.host}:{port}: {exc.strerror or exc}")
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(run(settings, *sockets))
    except ConfigurationError as exc:
        return _fail(f"configuration error: {exc}")
    except KeyboardInterrupt:
        return 130
    finally:
        for sock in sockets:
            sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
