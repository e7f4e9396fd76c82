"""One connection to the shared store, pipelined: what every Redis command of the relay goes over.

Each request sends two commands to Redis: the acquire script and the release. Through
redis-py's asyncio client each cost ~110 µs of the relay's CPU on loopback, through
valkey-glide ~190 µs and coredis ~380 µs, against ~40 µs here (bench/redis_clients.py,
docs/performance.md). So the connection is an asyncio protocol of its own, the way
pipelining clients work:

- a command is written at the end of the event-loop turn it was sent in, together with
  every other command of that turn (one `send(2)` for a burst of requests), and its
  caller waits on a future; nobody else is woken;
- Redis answers a connection's commands in the order sent, so each reply, as hiredis (the
  C parser the Redis project publishes) completes it, settles the oldest waiting future;
- one timer watches the oldest unanswered command: past the store's timeout, every
  waiting command fails and the connection is dropped (a late reply must never be taken
  for a later command's); the next command connects afresh;
- an error reply fails only its own command, except NOSCRIPT, where the command is sent
  again with the script's body (Redis restarted, or its script cache was flushed), and
  MOVED (a Redis Cluster node that does not own the keys' slot): every key of the relay
  is under one hash tag, so one node owns them all, and the connection moves to the node
  named and sends the command again (at most `MAX_REDIRECTS` times); ASK (a slot being
  migrated) fails that command;
- replies are bounded in size; anything that is not RESP ends the connection.

The URL is read by redis-py's own parser, so `redis://`, `rediss://` and `unix://` mean
what they mean there. The greeting is AUTH (a password, or an ACL user and its password),
SELECT and CLIENT SETNAME; SETNAME is a courtesy (it names the relay in CLIENT LIST): a
user without `client|setname` rights, or a proxy that does not know it, refuses it, and
the connection is used all the same.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from gptomni_relay.core.shared_store import SharedStore
from gptomni_relay.core.store_link import StoreUnavailable, encode_parts

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


# A command sent again to the node a MOVED names at most this often (a Cluster in the middle
# of a failover may name a node that redirects again; more is a misconfiguration).
MAX_REDIRECTS = 3
CLIENT_NAME = "gptomni-relay"


def moved_to(error: str) -> tuple[str, int] | None:
    """`MOVED <slot> <host>:<port>` (host may be an IPv6 address, bracketed or not): where to."""
    parts = error.split(" ")
    if len(parts) != 3 or parts[0] != "MOVED":
        return None
    host, _, port = parts[2].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@dataclass(frozen=True)
class Greeting:
    """A command sent first on every new connection; an optional one may be refused."""

    command: bytes = field(repr=False)  # AUTH carries the password
    optional: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where the store is and how to greet it."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    tls: ssl.SSLContext | None = None
    hand_shake: tuple[Greeting, ...] = field(default=(), repr=False)

    @classmethod
    def from_url(cls, url: str, password: str | None = None, *, username: str | None = None,
                 ca_file: str | None = None, client_name: str | None = CLIENT_NAME) -> Endpoint:
        """`password` (GPTOMNI_REDIS_PASSWORD or its file) and `username`
        (GPTOMNI_REDIS_USERNAME: an ACL user) win over the URL's; `ca_file`
        (GPTOMNI_REDIS_CA_FILE) over its `ssl_ca_certs`. TLS options: `tls_context`.
        `client_name` None: no CLIENT SETNAME. Raises ValueError for options it cannot honour."""
        options: dict[str, Any] = dict(parse_url(url))
        username, password = username or options.get("username"), password or options.get("password")
        greeting: list[Greeting] = []
        if username and not password:
            raise ValueError("an ACL user needs its password (GPTOMNI_REDIS_PASSWORD or GPTOMNI_REDIS_PASSWORD_FILE)")
        if password:
            greeting.append(Greeting(encode_parts("AUTH", username, password) if username
                                     else encode_parts("AUTH", password)))
        if options.get("db"):
            greeting.append(Greeting(encode_parts("SELECT", options["db"])))
        if client_name:
            greeting.append(Greeting(encode_parts("CLIENT", "SETNAME", client_name), optional=True))
        kind = options.get("connection_class")
        if kind is UnixDomainSocketConnection:
            if ca_file:
                raise ValueError("a CA file is for a rediss:// URL (TLS), not a unix socket")
            return cls(unix_path=options["path"], hand_shake=tuple(greeting))
        if ca_file:
            if kind is not SSLConnection:
                raise ValueError("a CA file is for a rediss:// URL (TLS): this URL is plain redis://")
            options["ssl_ca_certs"] = ca_file
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
    __slots__ = ("command", "future", "convert", "on_missing_script", "sent_at", "redirects")

    def __init__(self, command: bytes, future: asyncio.Future[Any], convert: Callable[[Any], Any] | None,
                 on_missing_script: Callable[[], bytes] | None) -> None:
        self.command = command
        self.future = future
        self.convert = convert
        self.on_missing_script = on_missing_script
        self.sent_at = 0.0
        self.redirects = 0


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
            if self.lost:  # the answer ended this connection (a redirect, a node that cannot serve)
                return
        # Bytes of the reply not complete yet: at most this read's if one completed in it.
        # (hiredis keeps a long array's parsed elements as objects, not in its buffer.)
        self._incomplete = len(data) if completed else self._incomplete + len(data)
        if self._incomplete > MAX_REPLY_BYTES:
            self.drop(StoreUnavailable(f"a reply from the store exceeds {MAX_REPLY_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(StoreUnavailable(f"the connection to the store was lost: {exc}" if exc
                                   else "the store closed the connection"))

    def drop(self, error: StoreUnavailable, notify: bool = True) -> None:
        """Ends the connection; every command still waiting fails with `error`. `notify`
        False: the store's data is not in doubt (a redirect), nobody is told."""
        if not self.lost:
            self.lost = True
            if self._transport is not None:
                self._transport.abort()
        waiting, self.waiting = list(self.waiting), collections.deque()
        self._owner._lost(self, waiting, error, notify)


class PipelinedConnection:
    def __init__(self, endpoint: Endpoint, timeout_seconds: float) -> None:
        self._endpoint = self._configured = endpoint
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
                greeting = [_Sent(hello.command, loop.create_future(), None, None) for hello in endpoint.hand_shake]
                link.write(greeting, loop.time())
                answers = await asyncio.gather(*(sent.future for sent in greeting), return_exceptions=True)
                for hello, answer in zip(endpoint.hand_shake, answers, strict=True):
                    if isinstance(answer, BaseException) and not hello.optional:
                        raise answer
                if link.lost:  # dropped after greeting back (garbage or an unasked reply came with it)
                    raise StoreUnavailable("the store dropped the connection after the hand-shake")
        except BaseException as exc:
            self._connecting = None
            # A Cluster node we were sent to is out of reach: the configured address again next time.
            self._endpoint = self._configured
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
        # An error reply fails its command; NOSCRIPT and MOVED send it again (module doc).
        future = entry.future
        if isinstance(reply, hiredis.ReplyError):
            if entry.on_missing_script is not None and str(reply).startswith("NOSCRIPT"):
                entry.command, entry.on_missing_script = entry.on_missing_script(), None
                self._outgoing.append(entry)
                self._flush()
                return
            target = moved_to(str(reply)) if entry.redirects < MAX_REDIRECTS else None
            if target is not None and self._endpoint.unix_path is None:
                self._move_to(*target)
                entry.redirects += 1
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

    def _move_to(self, host: str, port: int) -> None:
        """A Cluster node named the one that owns the keys' slot: from now on, that one (the
        greeting too: an ACL user is the same on every node). The next command connects there."""
        if (host, port) != (self._endpoint.host, self._endpoint.port):
            log.info("shared store: following a Cluster redirect", extra={"store_node": f"{host}:{port}"})
            self._endpoint = replace(self._endpoint, host=host, port=port)
        if self._link is not None:
            # The commands behind this one were sent to the wrong node too; they fail (the
            # pool retries or falls back), never sent twice.
            self._link.drop(StoreUnavailable("the store moved to another Cluster node"), notify=False)

    def _lost(self, link: _Link, waiting: list[_Sent], error: StoreUnavailable, notify: bool = True) -> None:
        self._fail(waiting, error)
        if self._link is link:
            self._link = None
            if notify and self.on_lost is not None and not self._closed:
                self.on_lost(error)

    @staticmethod
    def _fail(entries: list[_Sent], error: StoreUnavailable) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(error)


def connect_store(url: str, password: str | None, timeout_seconds: float, prefix: str, lease_seconds: float, *,
                  username: str | None = None, ca_file: str | None = None,
                  client_name: str | None = CLIENT_NAME) -> SharedStore:
    """The shared store over one pipelined connection. Connects lazily, at the first command,
    and fails fast: no retries of its own (the pool falls back instead); a command
    unanswered after `timeout_seconds` fails. Raises ValueError for a URL or options it
    cannot honour, OSError for a CA file it cannot read."""
    endpoint = Endpoint.from_url(url, password, username=username, ca_file=ca_file, client_name=client_name)
    return SharedStore(PipelinedConnection(endpoint, timeout_seconds), prefix, lease_seconds)
