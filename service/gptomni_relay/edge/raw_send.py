"""The raw-send fast path: a streamed answer's body pieces go to the server's own `send`.

Every ASGI middleware wraps `send` for each message; on a stream of many small pieces those
wrappers were a measurable share of the per-piece cost (docs/performance.md). The app
leaves the server's `send` in the request's scope for the duration of the request, and the
event stream writes its body pieces there. The response start and the final message still
pass through the middleware chain, so the error middlewares and the OpenTelemetry server
span see the status and the end of the response as before.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope, Send

SERVER_SEND_SCOPE_KEY = "gptomni.server_send"


def expose_server_send(scope: Scope, send: Send) -> None:
    """Called by the app with the server's own `send`, before the middleware chain."""
    scope[SERVER_SEND_SCOPE_KEY] = send


def withdraw_server_send(scope: Scope) -> None:
    # `send` is a method of the server's request object, which holds this scope: left
    # there, the pair would wait for the garbage collector (tests/test_no_cycles.py).
    scope.pop(SERVER_SEND_SCOPE_KEY, None)


def server_send(scope: Scope, send: Send) -> Send:
    """The server's own `send` if the app exposed it, else the chain's `send`."""
    send_raw: Send = scope.get(SERVER_SEND_SCOPE_KEY, send)
    return send_raw


def transport_closed(scope: Scope) -> Callable[[], bool]:
    """Whether the connection's transport is closed (always False without the server's `send`).

    uvloop raises RuntimeError ("the handler is closed") for a write into a transport that
    an earlier failed write closed; with reading paused (http_guard.py holds pipelined
    bytes) uvicorn is not told of the loss before the app returns, and logs an unfinished
    response at ERROR. The client hung up: the check marks the request cycle disconnected,
    as uvicorn's `connection_lost` would. A RuntimeError with the transport open stays a bug.
    uvicorn's `send` is its request cycle's method; the cycle holds the transport.
    """
    cycle = getattr(scope.get(SERVER_SEND_SCOPE_KEY), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return lambda: False

    def closed() -> bool:
        if not transport.is_closing():
            return False
        cycle.disconnected = True
        return True

    return closed
