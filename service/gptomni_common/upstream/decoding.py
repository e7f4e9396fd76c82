"""Turning the bytes GPT-Omni sends into text, with every step bounded.

The answer may come compressed. aiohttp would inflate each network chunk whole (a
64 KB gzip chunk of one repeated byte is 64 MB of text), so decompression is ours, in
steps of at most `MAX_STEP_BYTES`. An unknown content encoding or charset, or a corrupt
compressed stream, is an upstream failure like any other (failover), never a crash.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import Iterator

MAX_STEP_BYTES = 64 * 1024
ACCEPTED_ENCODINGS = "gzip, deflate"

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class UndecodableAnswer(Exception):
    """The body cannot be turned into text. The message quotes nothing the upstream sent."""


class AnswerDecoder:
    def __init__(self, content_encoding: str | None, charset: str | None) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        if encoding in ("", "identity"):
            self._inflater = None
        elif encoding in _WBITS:
            self._inflater = zlib.decompressobj(_WBITS[encoding])
        else:
            raise UndecodableAnswer("the upstream used a content encoding the relay did not ask for")
        try:
            codec = codecs.lookup(charset or "utf-8")
        except LookupError:
            raise UndecodableAnswer("the upstream declared an unknown charset") from None
        # Python's codec registry also holds bytes-to-bytes transforms (zlib, bz2, base64,
        # hex: unbounded inflation) and str-to-str ones (rot13): a charset must be text.
        if not codec._is_text_encoding:
            raise UndecodableAnswer("the upstream declared a charset that is no text encoding")
        self._text = codec.incrementaldecoder(errors="replace")

    def feed(self, data: bytes) -> Iterator[str]:
        """Text for `data`, in pieces of at most MAX_STEP_BYTES of inflated bytes each."""
        try:
            if self._inflater is None:
                text = self._text.decode(data)
                if text:
                    yield text
                return
            while data:
                inflated = self._inflater.decompress(data, MAX_STEP_BYTES)
                data = self._inflater.unconsumed_tail
                text = self._text.decode(inflated)
                if text:
                    yield text
        except zlib.error:
            raise UndecodableAnswer("the upstream sent a corrupt compressed body") from None
        except (UnicodeError, ValueError, TypeError):  # a text codec that cannot decode even with replace
            raise UndecodableAnswer("the upstream's text cannot be decoded in its declared charset") from None

    def finish(self) -> str:
        tail = b""
        if self._inflater is not None:
            if not self._inflater.eof:
                raise UndecodableAnswer("the upstream's compressed body ended before its end")
            # feed() left no input unconsumed, so little output can remain.
            tail = self._inflater.flush()
        try:
            return self._text.decode(tail, final=True)
        except (UnicodeError, ValueError, TypeError):
            raise UndecodableAnswer("the upstream's text cannot be decoded in its declared charset") from None


def decode_head(data: bytes, content_encoding: str | None, charset: str | None, limit: int) -> str:
    """At most `limit` bytes of text from the start of an error body, for classifying it."""
    try:
        decoder = AnswerDecoder(content_encoding, charset)
        text = ""
        for piece in decoder.feed(data):
            text += piece
            if len(text) >= limit:
                break
        return text[:limit]
    except UndecodableAnswer:
        return data[:limit].decode("utf-8", "replace")
