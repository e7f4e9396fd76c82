"""The seed project's design, for contrast: a blocking upstream call inside an async handler.

`requests` streams the upstream answer synchronously on the event loop thread, so one
slow upstream stream stalls every other client of the process. Do not use this.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import requests
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from gptomni_common.upstream.protocol import chat_body, chat_headers, chat_url

app = FastAPI()
UPSTREAM = ""


@app.post("/v1/chat/completions")
async def chat(request: Request) -> StreamingResponse:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    # The seed's mistake: a blocking call in `async def` (no thread, no await).
    upstream = requests.post(chat_url(UPSTREAM), data=chat_body(prompt),
                             headers=chat_headers(UPSTREAM, "session=bench", "gptomni-bench"), stream=True, timeout=60)
    pieces = list(upstream.iter_content(chunk_size=None, decode_unicode=True))

    def events():  # noqa: ANN202
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        for piece in pieces:
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": "gptomni",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    UPSTREAM = args.upstream
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
