from __future__ import annotations

from gptomni_common.upstream.protocol import Outcome


class UpstreamError(Exception):
    """One upstream attempt failed. Never carries the cookie: messages reach logs and clients."""

    def __init__(
        self,
        outcome: Outcome,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status = status
        self.retry_after = retry_after


class AnswerOverTime(UpstreamError):
    """An answer ran past the answer-time limit (`UpstreamTimeouts.answer`), however it came:
    the prompt's, not the credential's fault."""

    def __init__(self, limit_seconds: float) -> None:
        super().__init__(Outcome.TIMEOUT, f"the answer took longer than the relay's {limit_seconds:.0f}-second limit")
