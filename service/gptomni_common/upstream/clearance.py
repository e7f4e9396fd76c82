"""Cloudflare clearance through cloudscraper, kept off the event loop.

cloudscraper is synchronous (requests). It runs only when the upstream answers with a
challenge, in a small dedicated thread pool, and at most once at a time: every request
that hits the challenge meanwhile waits for that one solve. The hot path never touches
it; it streams with aiohttp (client.py) using the clearance cookies and User-Agent found here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from urllib.parse import urlsplit

import cloudscraper

from gptomni_common.upstream.protocol import landing_url

log = logging.getLogger(__name__)

_BROWSER = {"browser": "chrome", "platform": "linux", "mobile": False}


# What Cloudflare itself sets on a cleared client; any other name is the upstream's choice
# and would ride on every chat request. Bounded in count and size for the same reason.
CLEARANCE_COOKIE_NAMES = frozenset({"cf_clearance", "__cf_bm", "_cfuvid", "cf_chl_rc_m", "cf_chl_2", "cf_chl_prog"})
MAX_CLEARANCE_COOKIES = 8
MAX_CLEARANCE_COOKIE_BYTES = 4096
MAX_CLEARANCE_HEADER_BYTES = 8192
# A landing page (or any page of the solve) is read to at most this many decoded bytes,
# and the whole solve ends by its wall-clock deadline whatever bytes arrive.
MAX_SOLVE_BODY_BYTES = 256 * 1024
_READ_STEP = 1024  # raw bytes per read: a gzip step inflates to at most ~1 MB
_CHALLENGE_DELAY_SECONDS = 5.0  # cloudscraper would sleep whatever the page says


@dataclass(frozen=True)
class Clearance:
    user_agent: str
    cookies: dict[str, str] = field(default_factory=dict)
    _header: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once per solve, not per chat request.
        object.__setattr__(self, "_header", "; ".join(f"{name}={value}" for name, value in self.cookies.items()))

    def cookie_header(self, session_cookie: str) -> str:
        return f"{session_cookie}; {self._header}" if self._header else session_cookie


class SolveLimitExceeded(Exception):
    """A page of the solve was too large or the solve ran past its deadline."""


class _BoundedBody:
    """Stands in for urllib3's response as requests (and cloudscraper's `resp.text`) read it:
    at most MAX_SOLVE_BODY_BYTES decoded bytes, and nothing after the solve's deadline."""

    def __init__(self, raw, deadline: float) -> None:  # noqa: ANN001 (urllib3's HTTPResponse)
        self._raw = raw
        self._deadline = deadline
        self._read = 0

    def _count(self, chunk: bytes) -> bytes:
        self._read += len(chunk)
        if self._read > MAX_SOLVE_BODY_BYTES:
            self._raw.close()
            raise SolveLimitExceeded(f"a page of the clearance solve is over {MAX_SOLVE_BODY_BYTES} bytes")
        if time.monotonic() > self._deadline:
            self._raw.close()
            raise SolveLimitExceeded("the clearance solve ran past its deadline")
        return chunk

    def stream(self, amt: int = _READ_STEP, decode_content: bool | None = None):  # noqa: ANN201
        while True:
            chunk = self.read(_READ_STEP, decode_content=decode_content)
            if not chunk:
                return
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool | None = None, **_: object) -> bytes:
        if amt is None:  # whole: in steps, so that the cap holds
            return b"".join(iter(lambda: self.read(_READ_STEP, decode_content), b""))
        return self._count(self._raw.read1(min(amt, _READ_STEP), decode_content=decode_content))

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._raw, name)


def _bound_responses(scraper: cloudscraper.CloudScraper, deadline: float) -> None:
    for adapter in scraper.adapters.values():
        build = adapter.build_response

        def bounded(request, raw, _build=build):  # noqa: ANN001, ANN202
            raw.decode_content = True
            return _build(request, _BoundedBody(raw, deadline))

        adapter.build_response = bounded


class ClearanceSolver:
    def __init__(self, base_url: str, timeout_seconds: float = 30.0) -> None:
        self._base_url = base_url
        self._timeout = timeout_seconds  # the whole solve's wall-clock deadline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudscraper")
        self._solving: asyncio.Future[bool] | None = None
        self._generation = 0
        self.current = Clearance(user_agent=cloudscraper.User_Agent(browser=_BROWSER).headers["User-Agent"])
        self.solves = 0

    @property
    def generation(self) -> int:
        return self._generation

    async def refresh(self, seen_generation: int) -> bool:
        """Solve again unless someone already did since `seen_generation`. True if usable.

        One solve at a time, shared by every request that meets the challenge meanwhile; a
        request that stops waiting (its own deadline) leaves the solve running for the others,
        and the solve ends by its own deadline."""
        if self._generation != seen_generation:
            return bool(self.current.cookies)
        if self._solving is None or self._solving.done():
            self._solving = asyncio.ensure_future(self._solve())
        return await asyncio.shield(self._solving)

    async def _solve(self) -> bool:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            solved = await loop.run_in_executor(self._executor, self._solve_blocking, started + self._timeout)
        finally:
            self.solves += 1
            self._generation += 1
        if solved is None:
            log.warning("cloudflare clearance failed", extra={"seconds": round(time.monotonic() - started, 3)})
            return False
        self.current = solved
        log.info("cloudflare clearance obtained", extra={"seconds": round(time.monotonic() - started, 3)})
        return True

    def _solve_blocking(self, deadline: float) -> Clearance | None:
        scraper = cloudscraper.create_scraper(browser=_BROWSER, delay=_CHALLENGE_DELAY_SECONDS)
        _bound_responses(scraper, deadline)
        try:
            response = scraper.get(landing_url(self._base_url), timeout=min(self._timeout, 10.0), stream=True)
            response.close()
        except Exception as exc:  # cloudscraper raises many unrelated types
            log.warning("cloudscraper request failed", extra={"error": type(exc).__name__})
            return None
        finally:
            scraper.close()
        cookies = clearance_cookies(scraper.cookies, urlsplit(self._base_url).hostname or "")
        if response.status_code != 200 or not cookies:
            return None
        return Clearance(user_agent=scraper.headers["User-Agent"], cookies=cookies)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def clearance_cookies(jar: CookieJar, upstream_host: str) -> dict[str, str]:
    """The Cloudflare cookies in `jar` that the upstream's own host set.

    The solve follows redirects, and any host on the way may set a `cf_clearance`: sent
    to GPT-Omni with every credential, such a cookie would be a third party's choice."""
    taken: dict[str, str] = {}
    size = 0
    for cookie in jar:
        value = cookie.value or ""
        if (cookie.name not in CLEARANCE_COOKIE_NAMES or cookie.name in taken or not set_by(upstream_host, cookie.domain)
                or len(cookie.name) + len(value) > MAX_CLEARANCE_COOKIE_BYTES):
            continue
        size += len(cookie.name) + len(value) + 2
        if len(taken) >= MAX_CLEARANCE_COOKIES or size > MAX_CLEARANCE_HEADER_BYTES:
            break
        taken[cookie.name] = value
    return taken


def set_by(host: str, cookie_domain: str) -> bool:
    """Whether `host` may have set a cookie for `cookie_domain` (RFC 6265 domain-match): the
    host itself, or a parent domain of it that is more than a top-level domain."""
    host, domain = host.lower().rstrip("."), cookie_domain.lower().lstrip(".").rstrip(".")
    if not host or not domain:
        return False
    if host == domain:
        return True
    try:
        ipaddress.ip_address(host)
        return False  # an address has no parent domains
    except ValueError:
        return "." in domain and host.endswith("." + domain)
