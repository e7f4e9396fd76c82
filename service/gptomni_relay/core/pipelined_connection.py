"""One connection to the shared store, pipelined: what every Redis command of the relay goes over.

Each request sends two commands to Redis: the acquire script and the release. Through
redis-py's asyncio client each cost ~110 µs of the relay's CPU on loopback (a connection
taken from the pool and given back, a task for every timed write, a timeout context and a
stream reader wake-up for every read), four times a bare round trip; through one of its
connections used directly, still ~60 µs with the task that serialises callers. So the
connection is an asyncio protocol of its own, the way pipelining clients work:

- a command is written at the end of the event-loop turn it was sent in, together with
  every other command of that turn (one `send(2)` for a burst of requests), and its
  caller waits on a future; nobody else is woken;
- Redis answers a connection's commands in the order sent, so each reply, as hiredis (the
  C parser the Redis project publishes) completes it, settles the oldest waiting future;
- one timer watches the oldest unanswered command: past the store's timeout, every
  waiting command fails and the connection is dropped (a late reply must never be taken
  for a later command's); the next command connects afresh;
- an error reply fails only its own command, except NOSCRIPT, where the command is sent
  again with the script's body (Redis restarted, or its script cache was flushed);
- replies are bounded in size; anything that is not RESP ends the connection.

The URL is read by redis-py's own parser, so `redis://`, `rediss://` and `unix://` mean
what they mean there; the hand-shake (AUTH, SELECT, CLIENT SETNAME) is three commands.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

log = logging.getLogger(__name__)

# A reply larger than this (or garbage that never completes one) ends the connection.
MAX_REPLY_BYTES = 8 * 1024 * 1024
# Error replies from a node that cannot serve us now (a demoted primary, one still loading
# or cut off from its primary): the connection is dropped, so the next command connects
# afresh and finds the current primary behind the same name.
NODE_CANNOT_SERVE = ("READONLY", "LOADING", "MASTERDOWN")
# hiredis allocates an array (map, set, push) for as many elements as its header declares,
# before any arrives: `*999999999` would be 8 GB of pointers. A header declaring a million
# or more (seven digits) ends the connection; the relay's largest replies have thousands.
HUGE_AGGREGATE = re.compile(rb"[*%~>|]\d{7,}\r")


class StoreUnavailable(Exception):
    """The shared store did not answer (a connection failure, a timeout, an error reply)."""


def encode_bulk(*values: bytes | str | int) -> bytes:
    """Values as RESP bulk strings, the form every part of a command takes on the wire."""
    out = []
    for value in values:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode_command(part_count: int, *encoded_parts: bytes) -> bytes:
    """A command from parts already encoded by `encode_bulk`, `part_count` of them in all."""
    return b"*%d\r\n%s" % (part_count, b"".join(encoded_parts))


def encode_parts(*parts: bytes | str | int) -> bytes:
    return encode_command(len(parts), encode_bulk(*parts))


@dataclass(frozen=True)
class Endpoint:
    """Where the store is and how to greet it."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    tls: ssl.SSLContext | None = None
    hand_shake: tuple[bytes, ...] = field(default=(), repr=False)  # AUTH carries the password

    @classmethod
    def from_url(cls, url: str, password: str | None = None, client_name: str = "gptomni-relay") -> Endpoint:
        """`password` (GPTOMNI_REDIS_PASSWORD or its file) wins over one in the URL. TLS
        options: `tls_context`. Raises ValueError for options it cannot honour."""
        options: dict[str, Any] = dict(parse_url(url))
        username, password = options.get("username"), password or options.get("password")
        greeting: list[bytes] = []
        if password:
            greeting.append(encode_parts("AUTH", username, password) if username else encode_parts("AUTH", password))
        if options.get("db"):
            greeting.append(encode_parts("SELECT", options["db"]))
        greeting.append(encode_parts("CLIENT", "SETNAME", client_name))
        kind = options.get("connection_class")
        if kind is UnixDomainSocketConnection:
            return cls(unix_path=options["path"], hand_shake=tuple(greeting))
        tls = tls_context(options) if kind is SSLConnection else None
        return cls(host=options.get("host") or "127.0.0.1", port=int(options.get("port") or 6379), tls=tls,
                   hand_shake=tuple(greeting))


TLS_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
TLS_OPTIONS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_check_hostname", "ssl_certfile", "ssl_keyfile",
               "ssl_password"}


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """A `rediss://` URL's TLS options, as redis-py names them; any other `ssl_*` option is
    refused rather than ignored (a setting that silently does nothing is worse)."""
    unknown = sorted(name for name in options if name.startswith("ssl_") and name not in TLS_OPTIONS)
    if unknown:
        raise ValueError(f"unsupported TLS options in the Redis URL: {', '.join(unknown)} "
                         f"(supported: {', '.join(sorted(TLS_OPTIONS))})")
    requirement = str(options.get("ssl_cert_reqs") or "required").lower()
    if requirement not in TLS_VERIFY:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(TLS_VERIFY)}")
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    # redis-py's URL parser has already made ssl_check_hostname a bool.
    context.check_hostname = options.get("ssl_check_hostname", True) and requirement != "none"
    context.verify_mode = TLS_VERIFY[requirement]
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    return context


class _Sent:
    __slots__ = ("command", "future", "convert", "on_missing_script", "sent_at")

    def __init__(self, command: bytes, future: asyncio.Future[Any], convert: Callable[[Any], Any] | None,
                 on_missing_script: Callable[[], bytes] | None) -> None:
        self.command = command
        self.future = future
        self.convert = convert
        self.on_missing_script = on_missing_script
        self.sent_at = 0.0


class _Link(asyncio.Protocol):
    """One TCP (or Unix, or TLS) connection: writes commands, matches replies in order."""

    def __init__(self, owner: PipelinedConnection) -> None:
        self._owner = owner
        self._reader = hiredis.Reader(encoding="utf-8")
        self._transport: asyncio.Transport | None = None
        self.waiting: collections.deque[_Sent] = collections.deque()
        self.lost = False
        self._incomplete = 0
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def write(self, entries: list[_Sent], now: float) -> None:
        if self.lost or self._transport is None:
            self._owner._fail(entries, StoreUnavailable("the connection to the store was lost"))
            return
        for entry in entries:
            entry.sent_at = now
        self.waiting.extend(entries)
        self._transport.write(b"".join(entry.command for entry in entries))

    def data_received(self, data: bytes) -> None:
        if HUGE_AGGREGATE.search(self._tail + data):  # with the last read's end: a header split across reads
            self.drop(StoreUnavailable("the store declared a reply of a million elements or more"))
            return
        self._tail = data[-16:]
        self._reader.feed(data)
        completed = False
        while True:
            try:
                reply = self._reader.gets()
            except Exception as exc:  # noqa: BLE001 - not RESP, or text that is not UTF-8
                self.drop(StoreUnavailable(f"the store's reply is unreadable: {type(exc).__name__}"))
                return
            if reply is False:
                break
            if not self.waiting:
                self.drop(StoreUnavailable("the store replied to a command never sent"))
                return
            completed = True
            self._owner._answer(self.waiting.popleft(), reply)
        # Bytes of the reply not complete yet: at most this read's if one completed in it.
        # (hiredis keeps a long array's parsed elements as objects, not in its buffer.)
        self._incomplete = len(data) if completed else self._incomplete + len(data)
        if self._incomplete > MAX_REPLY_BYTES:
            self.drop(StoreUnavailable(f"a reply from the store exceeds {MAX_REPLY_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(StoreUnavailable(f"the connection to the store was lost: {exc}" if exc
                                   else "the store closed the connection"))

    def drop(self, error: StoreUnavailable) -> None:
        """Ends the connection; every command still waiting fails with `error`."""
        if not self.lost:
            self.lost = True
            if self._transport is not None:
                self._transport.abort()
        waiting, self.waiting = list(self.waiting), collections.deque()
        self._owner._lost(self, waiting, error)


class PipelinedConnection:
    def __init__(self, endpoint: Endpoint, timeout_seconds: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout_seconds
        self._link: _Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._outgoing: list[_Sent] = []  # sent in this event-loop turn, or before the link is up
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        # Told whenever the connection in use is lost, even with no command waiting (an idle
        # connection to a store that restarted): what was kept there may be gone.
        self.on_lost: Callable[[StoreUnavailable], None] | None = None
        self.batches_sent = 0  # writes to the store: how well commands share them (tests, benchmarks)

    def send(self, command: bytes, convert: Callable[[Any], Any] | None = None,
             on_missing_script: Callable[[], bytes] | None = None) -> asyncio.Future[Any]:
        """Queues `command` (encoded: `encode_command`); the future gets its reply, passed
        through `convert`, or a StoreUnavailable. Cancelling the future does not withdraw
        the command once it is written. `on_missing_script`: for an EVALSHA, the command to
        send instead if Redis does not know the script. At most one command per request in
        flight waits here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(StoreUnavailable("the connection to the store is closed"))
            return future
        self._outgoing.append(_Sent(command, future, convert, on_missing_script))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def reconnect(self) -> None:
        """Drops the connection (commands waiting on it fail); the next command connects
        afresh, resolving the store's name again (a failover may have moved it)."""
        if self._link is not None:
            self._link.drop(StoreUnavailable("the connection to the store was dropped"))

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        error = StoreUnavailable("the connection to the store is closed")
        if self._link is not None:
            self._link.drop(error)
        self._fail(self._outgoing, error)
        self._outgoing = []

    # --- connecting ------------------------------------------------------------------

    async def _connect(self) -> None:
        """Connects and greets; then writes what was sent meanwhile, or fails it."""
        loop = asyncio.get_running_loop()
        endpoint = self._endpoint
        link: _Link | None = None
        try:
            async with asyncio.timeout(self._timeout):
                if endpoint.unix_path is not None:
                    _, link = await loop.create_unix_connection(lambda: _Link(self), endpoint.unix_path)
                else:
                    _, link = await loop.create_connection(lambda: _Link(self), endpoint.host, endpoint.port,
                                                           ssl=endpoint.tls)
                greeting = [_Sent(command, loop.create_future(), None, None) for command in endpoint.hand_shake]
                link.write(greeting, loop.time())
                for answer in await asyncio.gather(*(sent.future for sent in greeting), return_exceptions=True):
                    if isinstance(answer, BaseException):
                        raise answer
                if link.lost:  # dropped after greeting back (garbage or an unasked reply came with it)
                    raise StoreUnavailable("the store dropped the connection after the hand-shake")
        except BaseException as exc:
            self._connecting = None
            failure = StoreUnavailable(f"cannot reach the store: {type(exc).__name__}: {exc}" if str(exc)
                                       else f"cannot reach the store: {type(exc).__name__}")
            if link is not None:
                link.drop(failure)
            outgoing, self._outgoing = self._outgoing, []
            self._fail(outgoing, failure)
            if not isinstance(exc, Exception):
                raise  # cancelled (closing)
            return
        self._connecting = None
        self._link = link
        self._flush()

    # --- writing -----------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outgoing:
            return
        if self._link is not None and self._link.lost:
            self._link = None
        if self._link is None:
            if self._connecting is None and not self._closed:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(), name="shared-store-connect")
            return
        # A command whose caller already has its answer (a failure) is not sent after all.
        entries = [entry for entry in self._outgoing if not entry.future.done()]
        self._outgoing = []
        if not entries:
            return
        loop = asyncio.get_running_loop()
        self._link.write(entries, loop.time())
        self.batches_sent += 1
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_deadline)

    def _check_deadline(self) -> None:
        """Fails everything if the oldest unanswered command is older than the timeout."""
        self._watchdog = None
        link = self._link
        if link is None or not link.waiting:
            return
        loop = asyncio.get_running_loop()
        overdue = loop.time() - link.waiting[0].sent_at
        if overdue >= self._timeout:
            link.drop(StoreUnavailable(f"the store did not answer within {self._timeout} s"))
        else:
            self._watchdog = loop.call_later(self._timeout - overdue, self._check_deadline)

    # --- replies -----------------------------------------------------------------------

    def _answer(self, entry: _Sent, reply: Any) -> None:
        future = entry.future
        if isinstance(reply, hiredis.ReplyError):
            if entry.on_missing_script is not None and str(reply).startswith("NOSCRIPT"):
                entry.command, entry.on_missing_script = entry.on_missing_script(), None
                self._outgoing.append(entry)
                self._flush()
                return
            if not future.done():
                future.set_exception(StoreUnavailable(f"the store refused a command: {reply}"))
            if str(reply).startswith(NODE_CANNOT_SERVE):
                self.reconnect()
            return
        if future.done():
            return
        try:
            future.set_result(entry.convert(reply) if entry.convert is not None else reply)
        except Exception as exc:  # a reply of the wrong shape
            log.warning("shared store: unexpected reply", extra={"error": f"{type(exc).__name__}: {exc}"})
            future.set_exception(StoreUnavailable(f"unexpected reply: {type(exc).__name__}"))

    def _lost(self, link: _Link, waiting: list[_Sent], error: StoreUnavailable) -> None:
        self._fail(waiting, error)
        if self._link is link:
            self._link = None
            if self.on_lost is not None and not self._closed:
                self.on_lost(error)

    @staticmethod
    def _fail(entries: list[_Sent], error: StoreUnavailable) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(error)
