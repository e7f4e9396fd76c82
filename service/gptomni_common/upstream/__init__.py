"""Everything that speaks to GPT-Omni. The relay and the operator's health checks share it."""

from gptomni_common.upstream.client import UpstreamClient, UpstreamTimeouts
from gptomni_common.upstream.errors import AnswerOverTime, UpstreamError
from gptomni_common.upstream.protocol import Outcome

__all__ = ["AnswerOverTime", "Outcome", "UpstreamClient", "UpstreamError", "UpstreamTimeouts"]
