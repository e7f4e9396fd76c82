"""The operator's memory of one object, typed (kopf's `memo` kwarg).

kopf gives every object it handles a copy of the memo passed to `kopf.operator`; the copy
is a fresh `CredentialMemo` (see `__copy__`), never one shared between objects. Secrets
get one too and leave it unused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gptomni_operator.members import Member


@dataclass(eq=False)
class CredentialMemo:
    # Set to make the credential's judge check now instead of at its next due time.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The spec generation the last event carried: a new one wakes the judge.
    seen_generation: int | None = None
    # The credential as its publisher last saw it: only a change publishes again.
    member: Member | None = None
    # The digest of the cookie this process last judged, once it has judged one (a
    # 1-tuple, since None is a digest too: "no usable cookie").
    _judged: tuple[str | None] | None = None
    _judging: bool = False
    _seen_meanwhile: tuple[str | None] | None = None

    def __copy__(self) -> CredentialMemo:
        return CredentialMemo()

    def cookie_seen(self, digest: str | None, judged_in_status: str | None) -> None:
        """The Secret watch delivered this cookie (None: no usable one). A watch (re)start
        replays every Secret, so only a value other than the one judged is news; one
        seen during a pass is compared with what that pass read, once it is done."""
        if self._judging:
            self._seen_meanwhile = (digest,)
            return
        judged = self._judged[0] if self._judged is not None else judged_in_status
        if digest != judged:
            self.wake.set()

    def pass_started(self) -> None:
        self._judging, self._seen_meanwhile = True, None

    def pass_ended(self, judged: tuple[str | None] | None) -> None:
        """`judged`: the digest the pass read (1-tuple), None if it failed before."""
        self._judging = False
        if judged is not None:
            self._judged = judged
        if self._seen_meanwhile is not None and self._seen_meanwhile != self._judged:
            self.wake.set()
