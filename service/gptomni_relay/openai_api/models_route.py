"""GET /v1/models and /v1/models/{id}: the configured model ids and their aliases."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptomni_relay.openai_api.auth import require_api_key
from gptomni_relay.openai_api.errors import APIError, new_request_id
from gptomni_relay.openai_api.schemas import Model, ModelList

_STARTED = int(time.time())


async def list_models(request: Request) -> Response:
    require_api_key(request)
    models = request.app.state.relay.settings.model_names
    return JSONResponse(ModelList(data=[Model(id=model_id, created=_STARTED) for model_id in models]).model_dump(),
                        headers={"x-request-id": new_request_id()})


async def get_model(request: Request) -> Response:
    require_api_key(request)
    model_id = request.path_params["model_id"]
    if request.app.state.relay.settings.model_id(model_id) is None:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return JSONResponse(Model(id=model_id, created=_STARTED).model_dump(), headers={"x-request-id": new_request_id()})


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
]
