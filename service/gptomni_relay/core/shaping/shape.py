"""What a client asked the answer to look like, in the relay's own words (no wire format).

Each OpenAI surface (chat completions, Responses) reads its request into one `AnswerShape`;
everything the web chat cannot do itself is then built from it, the same way for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gptomni_relay.core.conversation import ToolCall

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None = None
    # The tool's JSON schema for its arguments (checked when the request is read); None
    # when the tool takes no declared arguments: any JSON object is then accepted.
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ToolChoice:
    """`none`: tools are not offered; `auto`: the model may call one or answer in text;
    `required`: it must call at least one; with `name`, it must call that one."""

    mode: Literal["none", "auto", "required"] = "auto"
    name: str | None = None


@dataclass(frozen=True)
class JsonFormat:
    """`json_object` when `schema` is None, else `json_schema` (validated whether or not
    the client set `strict`: an answer that does not match is never passed on)."""

    schema: Mapping[str, Any] | None = None
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class AnswerShape:
    stops: tuple[str, ...] = ()
    max_tokens: int | None = None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    json_format: JsonFormat | None = None

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode != "none"

    @property
    def is_plain(self) -> bool:
        """Nothing to shape: the answer goes out as GPT-Omni writes it (the fast path)."""
        return not (self.stops or self.max_tokens is not None or self.offers_tools or self.json_format)

    @property
    def needs_whole_answer(self) -> bool:
        """Whether the answer must be complete before anything of it is sent: a tool call or
        a JSON document is known good (parsed, validated) only at its end."""
        return self.offers_tools or self.json_format is not None


@dataclass(frozen=True)
class ShapedAnswer:
    """An answer as the client gets it: text or tool calls, why it ended, what it cost."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    completion_tokens: int
