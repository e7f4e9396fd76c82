"""Cookies as the operator reads them from Secrets: one reading and one digest for the
check and the Secret watch, so an unchanged cookie never looks changed."""

from __future__ import annotations

import base64

import pytest

from gptomni_operator.cookies import CookieCache, CookieUnavailable, cookie_digest, cookie_from_data, digest_in_data
from gptomni_operator.spec import SecretKeyRef

REF = SecretKeyRef(name="alice-cookie")


def data(value: bytes, key: str = "cookie") -> dict[str, str]:
    return {key: base64.b64encode(value).decode("ascii")}


def test_a_trailing_newline_is_the_same_cookie() -> None:
    """`kubectl create secret --from-file` keeps the file's final newline."""
    assert cookie_from_data("ns", REF, data(b"session=a\n")) == "session=a"
    assert digest_in_data("ns", REF, data(b"session=a\n")) == digest_in_data("ns", REF, data(b"session=a"))
    assert digest_in_data("ns", REF, data(b"session=b")) != digest_in_data("ns", REF, data(b"session=a"))


@pytest.mark.parametrize("secret_data, reason", [
    (None, "SecretNotFound"),
    (data(b"session=a", key="other"), "SecretKeyNotFound"),
    (data(b"  \n"), "SecretInvalid"),
    (data(b"\xff\xfe"), "SecretInvalid"),
    (data(b"session=a\r\nX-Injected: 1"), "SecretInvalid"),
])
def test_unusable_cookies_say_why(secret_data: dict[str, str] | None, reason: str) -> None:
    with pytest.raises(CookieUnavailable) as caught:
        cookie_from_data("ns", REF, secret_data)
    assert caught.value.reason == reason and "session" not in caught.value.message
    assert digest_in_data("ns", REF, secret_data) is None


def test_the_cache_gives_a_cookie_only_for_the_digest_that_was_checked() -> None:
    cache = CookieCache()
    assert cache.observe("ns", REF, data(b"session=new")) == cookie_digest("session=new")
    assert cache.checked("ns", REF, cookie_digest("session=new")) == "session=new"
    assert cache.checked("ns", REF, cookie_digest("session=old")) is None  # changed since its check
    cache.observe("ns", REF, None)  # the Secret was deleted
    assert cache.checked("ns", REF, cookie_digest("session=new")) is None
