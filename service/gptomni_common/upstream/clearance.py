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


@dataclass(frozen=True)
class Clearance:
    user_agent: str
    cookies: dict[str, str] = field(default_factory=dict)

    def cookie_header(self, session_cookie: str) -> str:
        if not self.cookies:
            return session_cookie
        extra = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return f"{session_cookie}; {extra}"


class ClearanceSolver:
    def __init__(self, base_url: str, timeout_seconds: float = 30.0) -> None:
        self._base_url = base_url
        self._timeout = timeout_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudscraper")
        self._lock = asyncio.Lock()
        self._generation = 0
        self.current = Clearance(user_agent=cloudscraper.User_Agent(browser=_BROWSER).headers["User-Agent"])
        self.solves = 0

    @property
    def generation(self) -> int:
        return self._generation

    async def refresh(self, seen_generation: int) -> bool:
        """Solve again unless someone already did since `seen_generation`. True if usable."""
        async with self._lock:
            if self._generation != seen_generation:
                return bool(self.current.cookies)
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            solved = await loop.run_in_executor(self._executor, self._solve_blocking)
            self.solves += 1
            self._generation += 1
            if solved is None:
                log.warning("cloudflare clearance failed", extra={"seconds": round(time.monotonic() - started, 3)})
                return False
            self.current = solved
            log.info("cloudflare clearance obtained", extra={"seconds": round(time.monotonic() - started, 3)})
            return True

    def _solve_blocking(self) -> Clearance | None:
        scraper = cloudscraper.create_scraper(browser=_BROWSER)
        try:
            response = scraper.get(landing_url(self._base_url), timeout=self._timeout)
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
    return {cookie.name: cookie.value for cookie in jar
            if cookie.name.startswith(("cf_", "__cf")) and set_by(upstream_host, cookie.domain)}


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
