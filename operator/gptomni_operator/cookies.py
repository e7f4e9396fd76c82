"""Cookies as the operator sees them: read from a Secret's data, identified by one digest.

The same two functions serve the check (which GETs the Secret) and the Secret watch
(which receives it): a cookie stored with a trailing newline, as
`kubectl create secret --from-file` stores it, is the same cookie on both sides, so a
replayed watch event never looks like a change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from gptomni_common.pool_file import check_cookie_value
from gptomni_operator.spec import SecretKeyRef


class CookieUnavailable(Exception):
    """The referenced cookie Secret or key is missing or unusable; `reason` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def cookie_from_data(namespace: str, ref: SecretKeyRef, data: Mapping[str, str] | None) -> str:
    """The cookie under `ref.key` of a Secret's `data` (None: no such Secret)."""
    where = f"key {ref.key!r} of Secret {namespace}/{ref.name}"
    if data is None:
        raise CookieUnavailable("SecretNotFound", f"Secret {namespace}/{ref.name} does not exist")
    encoded = data.get(ref.key)
    if encoded is None:
        raise CookieUnavailable("SecretKeyNotFound", f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
    try:
        cookie = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        raise CookieUnavailable("SecretInvalid", f"{where} is not UTF-8 text") from None
    if not cookie:
        raise CookieUnavailable("SecretInvalid", f"{where} is empty")
    try:
        return check_cookie_value(cookie)
    except ValueError:
        raise CookieUnavailable("SecretInvalid", f"{where} contains a control character") from None


def cookie_digest(cookie: str) -> str:
    """Identifies a cookie (in the status and in memory) without revealing it."""
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


def digest_in_data(namespace: str, ref: SecretKeyRef, data: Mapping[str, str] | None) -> str | None:
    """The digest of the usable cookie in `data`, None when there is none."""
    try:
        return cookie_digest(cookie_from_data(namespace, ref, data))
    except CookieUnavailable:
        return None


class CookieCache:
    """The last value seen of each referenced cookie, from checks and from the Secret watch.

    The publisher takes a cookie from here only when its digest is the one the judge
    checked, so an unchecked new value never reaches a pool.
    """

    def __init__(self) -> None:
        self._cookies: dict[tuple[str, str, str], str] = {}

    def put(self, namespace: str, ref: SecretKeyRef, cookie: str | None) -> None:
        if cookie is None:
            self._cookies.pop((namespace, ref.name, ref.key), None)
        else:
            self._cookies[(namespace, ref.name, ref.key)] = cookie

    def observe(self, namespace: str, ref: SecretKeyRef, data: Mapping[str, str] | None) -> str | None:
        """Record a Secret's value as the watch delivered it; return its cookie digest."""
        try:
            cookie: str | None = cookie_from_data(namespace, ref, data)
        except CookieUnavailable:
            cookie = None
        self.put(namespace, ref, cookie)
        return None if cookie is None else cookie_digest(cookie)

    def checked(self, namespace: str, ref: SecretKeyRef, digest: str) -> str | None:
        """The cached cookie if it is the one with this digest."""
        cookie = self._cookies.get((namespace, ref.name, ref.key))
        return cookie if cookie is not None and cookie_digest(cookie) == digest else None
