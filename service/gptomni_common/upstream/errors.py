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
