"""Why the relay could not answer, in the domain's words. The HTTP layer maps each to an
OpenAI error in one place (openai_api/errors.py). Messages never carry a cookie."""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    """A request the relay cannot serve. `retry_after` (seconds) when trying later helps."""

    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PoolUnavailable(RelayError):
    """No credential can take a request now."""


class NoCredentials(PoolUnavailable):
    """None is configured, or every one was rejected by GPT-Omni."""


class AllCoolingDown(PoolUnavailable):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"every credential is cooling down after upstream rate limits; retry in {retry_after:.0f}s")
        self.retry_after = retry_after


class AllChallenged(AllCoolingDown):
    """Every credential is cooling down after a Cloudflare challenge no clearance passed:
    the upstream is out of reach (503), not the client going too fast (429)."""

    def __init__(self, retry_after: float) -> None:
        PoolUnavailable.__init__(self, "every credential met a Cloudflare challenge the relay could not pass; "
                                       f"retry in {retry_after:.0f}s")
        self.retry_after = retry_after


class AllBusy(PoolUnavailable):
    """Every usable credential is at its concurrency limit."""

    retry_after = 1.0


class ServerBusy(RelayError):
    """The relay holds as many request bodies as its budget allows (core/byte_budget.py):
    the relay itself is busy, not the client too fast; bodies are read in moments."""

    retry_after = 1.0


class NothingLeftToTry(PoolUnavailable):
    """Only within one request's failover: every usable credential has had its attempt."""


class UpstreamFailed(RelayError):
    """GPT-Omni refused, broke off or sent something unusable (after failover)."""


class UpstreamTimedOut(UpstreamFailed):
    """GPT-Omni did not answer in time, or went silent mid-answer."""


class AnswerTooLarge(UpstreamFailed):
    """An answer outgrew the relay's limit (GPTOMNI_MAX_ANSWER_CHARS)."""


class AnswerTookTooLong(UpstreamTimedOut):
    """An answer ran past the relay's limit (GPTOMNI_MAX_ANSWER_SECONDS), however steadily it came."""


class UnusableAnswer(UpstreamFailed):
    """GPT-Omni answered, but not in the shape the client asked for (no valid tool call where
    one was required, JSON that does not parse or match its schema). Failover tries again
    within the request's attempt budget, with `retry_prompt` when one is given; `code` names
    what was wrong for the client. `fallback` (a core.shaping ShapedAnswer) is what the
    client gets instead of an error when the attempts run out, where one is acceptable."""

    def __init__(self, message: str, code: str, retry_prompt: str | None = None, fallback: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_prompt = retry_prompt
        self.fallback = fallback


class BadConversation(RelayError):
    """The conversation cannot be folded into a prompt. `message_index` and `part_index`
    say where, when one place is to blame."""

    def __init__(self, message: str, message_index: int | None = None, part_index: int | None = None) -> None:
        super().__init__(message)
        self.message_index = message_index
        self.part_index = part_index
