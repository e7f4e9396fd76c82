"""The GPT-Omni web protocol: one place that knows how a chat request looks on the wire.

`POST {base}/api/chatWithText` with a `text/plain` body `{"prompt": "..."}` and the
session cookie; the answer is a raw UTF-8 text stream (not SSE).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel

from gptomni_common.upstream.decoding import ACCEPTED_ENCODINGS

CHAT_PATH = "/api/chatWithText"
LANDING_PATH = "/zh"

# Markers of a Cloudflare interstitial ("Just a moment...") rather than an app error.
_CHALLENGE_BODY_MARKERS = ("just a moment", "challenge-platform", "cf-chl", "cf_chl_opt")


class Outcome(StrEnum):
    """How one upstream attempt ended; also the `outcome` label of the metrics."""

    OK = "ok"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    CHALLENGE = "challenge"
    TIMEOUT = "timeout"
    ERROR = "error"


class ChatRequestBody(BaseModel):
    prompt: str


def chat_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}{CHAT_PATH}"


def landing_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}{LANDING_PATH}"


def chat_headers(base_url: str, cookie: str, user_agent: str) -> dict[str, str]:
    origin = base_url.rstrip("/")
    return {
        "Content-Type": "text/plain;charset=UTF-8",
        "Origin": origin,
        "Referer": f"{origin}{LANDING_PATH}",
        "Cookie": cookie,
        "User-Agent": user_agent,
        "Accept": "*/*",
        "Accept-Encoding": ACCEPTED_ENCODINGS,
    }


def chat_body(prompt: str) -> bytes:
    return ChatRequestBody(prompt=prompt).model_dump_json().encode("utf-8")


def is_challenge(status: int, headers: Mapping[str, str], body_head: str) -> bool:
    if status not in (403, 429, 503):
        return False
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return True
    served_by_cloudflare = "cloudflare" in headers.get("server", "").lower()
    lowered = body_head.lower()
    return served_by_cloudflare and any(marker in lowered for marker in _CHALLENGE_BODY_MARKERS)


def classify_status(status: int, headers: Mapping[str, str], body_head: str) -> Outcome:
    """Map a non-streaming (error) response onto the outcome that drives pool state."""
    if 200 <= status < 300:
        return Outcome.OK
    if is_challenge(status, headers, body_head):
        return Outcome.CHALLENGE
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (408, 504):
        return Outcome.TIMEOUT
    return Outcome.ERROR


# Whatever the upstream says, waiting longer than a day is not an answer we act on.
MAX_RETRY_AFTER_SECONDS = 86_400.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), at most a day."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # A 400-digit number would be infinity as a float: bounded before converting.
        digits = value.lstrip("0") or "0"
        return MAX_RETRY_AFTER_SECONDS if len(digits) > 6 else min(float(digits), MAX_RETRY_AFTER_SECONDS)
    try:
        seconds = email.utils.parsedate_to_datetime(value).timestamp() - (now if now is not None else time.time())
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)
