"""The per-piece fast path renders exactly what a full model dump of the chunk would."""

from __future__ import annotations

import pytest

from gptomni_relay.openai_api.answer_writer import PieceTemplate
from gptomni_relay.openai_api.event_stream import sse_data
from gptomni_relay.openai_api.schemas import ChatCompletionChunk, ChunkChoice, Delta

PIECES = ["plain", "", 'quotes " and \\ backslash', "new\nline", "中文回答", "nul \x00", "sep \u2028 \u2029", "emoji 🙂"]


@pytest.mark.parametrize("exclude", [None, {"usage"}])
def test_template_matches_a_full_dump_for_awkward_pieces(exclude: set[str] | None) -> None:
    def event_for(delta: Delta) -> bytes:
        chunk = ChatCompletionChunk(id="chatcmpl-x", created=1, model="gptomni", choices=[ChunkChoice(delta=delta)])
        return sse_data(chunk.model_dump_json(exclude=exclude).encode())

    template = PieceTemplate(lambda text: event_for(Delta(content=text)))
    for piece in PIECES:
        assert template.event(piece) == event_for(Delta(content=piece))
