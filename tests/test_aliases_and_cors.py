"""Model aliases (GPTOMNI_MODEL_ALIASES) on every surface and in /v1/models, and opt-in
CORS (GPTOMNI_CORS_ORIGINS): nothing allowed by default, preflights answered, errors
readable by the browser too."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gptomni_relay.settings import RelaySettings
from tests.harness import API_KEY, Harness, sample_value

ALIASES = {"gpt-4o": "gptomni", "gpt-4o-mini": "gptomni"}
ORIGIN = "https://app.example.com"


def test_aliases_are_listed_and_each_answers_with_the_name_sent(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(model_aliases=ALIASES)
    client = relay.client()
    assert [model.id for model in client.models.list()] == ["gptomni", "gpt-4o", "gpt-4o-mini"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"

    chat = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    legacy = client.completions.create(model="gpt-4o-mini", prompt="Hi")
    assert (chat.model, legacy.model) == ("gpt-4o", "gpt-4o-mini")
    # The metrics count the model the alias stands for: the label's values stay the configured ids.
    assert sample_value(relay.metrics_text(), "gptomni_requests_total", model="gptomni", status="200") == 2


def test_an_alias_of_an_unknown_model_or_of_a_model_id_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="not in GPTOMNI_MODELS"):
        RelaySettings(model_aliases="gpt-4o=nothing")
    with pytest.raises(ValidationError, match="already a model id"):
        RelaySettings(models="gptomni,other", model_aliases="other=gptomni")
    with pytest.raises(ValidationError, match="alias=model"):
        RelaySettings(model_aliases="gpt-4o")
    assert RelaySettings(model_aliases=" gpt-4o = gptomni ,").model_aliases == {"gpt-4o": "gptomni"}


def test_no_origin_is_allowed_by_default(relay: Harness) -> None:
    http = relay.http()
    preflight = http.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert "access-control-allow-origin" not in preflight.headers
    answer = http.get("/v1/models", headers={"Origin": ORIGIN})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_an_allowed_origin_gets_its_preflight_and_readable_answers_and_errors(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(cors_origins=[ORIGIN])
    http = relay.http()
    preflight = http.options("/v1/responses", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = {name.strip().lower() for name in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed

    answer = http.post("/v1/chat/completions", headers={"Origin": ORIGIN},
                       json={"model": "gptomni", "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    # Errors too: a browser client must be able to read why it was refused.
    refused = http.post("/v1/chat/completions", headers={"Origin": ORIGIN, "Authorization": "Bearer wrong"},
                        json={"model": "gptomni", "messages": [{"role": "user", "content": "Hi"}]})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    bad = http.post("/v1/completions", headers={"Origin": ORIGIN}, json={"model": "gptomni", "prompt": "x", "echo": True})
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == ORIGIN

    other = http.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert http.get("/v1/models", headers={"Origin": "https://evil.example.com",
                                           "Authorization": f"Bearer {API_KEY}"}).headers.get(
        "access-control-allow-origin") is None
