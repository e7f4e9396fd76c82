"""response_format json_object / json_schema through the OpenAI SDK against a real relay:
GPT-Omni's JSON is taken from prose and code fences, checked against the schema, asked
again on the attempt budget when unusable, and never passed on as prose with a 200."""

from __future__ import annotations

import datetime
import enum
import json

import openai
import pytest
from pydantic import BaseModel, Field

from tests.harness import Harness


class Weather(BaseModel):
    city: str
    celsius: int


def ask(cue: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Weather in Paris as JSON. [[simulate: {cue}]]"}]


FENCED = 'Sure! Here it is:\n```json\n{"city": "Paris", "celsius": 21}\n```\nAnything else?'


def test_parse_with_a_pydantic_model_takes_the_json_out_of_prose(relay: Harness) -> None:
    completion = relay.client().chat.completions.parse(model="gptomni", messages=ask(FENCED), response_format=Weather)
    assert completion.choices[0].message.parsed == Weather(city="Paris", celsius=21)
    assert completion.choices[0].finish_reason == "stop"
    prompt = relay.sim.received[-1].prompt
    assert "matches this JSON schema" in prompt and '"celsius"' in prompt


def test_json_object_streamed_and_not(relay: Harness) -> None:
    client = relay.client()
    bare = 'The answer is {"a": [1, 2]} as asked.'
    completion = client.chat.completions.create(model="gptomni", messages=ask(bare),
                                                response_format={"type": "json_object"})
    assert json.loads(completion.choices[0].message.content or "") == {"a": [1, 2]}
    chunks = list(client.chat.completions.create(model="gptomni", messages=ask(bare), stream=True,
                                                 response_format={"type": "json_object"}))
    assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks)) == {"a": [1, 2]}
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_answer_off_the_schema_is_asked_again(relay: Harness) -> None:
    cue = 'No JSON today, sorry. ||| {"city": "Paris", "celsius": "warm"} ||| {"city": "Paris", "celsius": 21}'
    completion = relay.client().chat.completions.parse(model="gptomni", messages=ask(cue), response_format=Weather)
    assert completion.choices[0].message.parsed == Weather(city="Paris", celsius=21)
    assert len(relay.sim.received) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_no_usable_json_within_the_attempts_is_a_502_never_prose(relay: Harness, stream: bool) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        relay.client().chat.completions.create(model="gptomni", messages=ask("I would rather chat."), stream=stream,
                                               response_format={"type": "json_object"})
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "invalid_json_output"
    assert len(relay.sim.received) == 3  # GPTOMNI_MAX_ATTEMPTS


def test_an_invalid_schema_is_a_400_naming_it(relay: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        relay.client().chat.completions.create(
            model="gptomni", messages=ask("{}"),
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert caught.value.body["param"] == "response_format.json_schema.schema"


def test_a_length_cut_is_passed_on_as_length(relay: Harness) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        relay.client().chat.completions.parse(model="gptomni", messages=ask(FENCED), response_format=Weather,
                                              max_tokens=3)


class Reading(BaseModel):
    celsius: float


def test_a_number_json_cannot_carry_is_asked_again_never_passed_on(relay: Harness) -> None:
    # Python's json reads 1e999 as infinity and would write it back as `Infinity`, which
    # no client's JSON parser takes: such an answer is unusable, as prose is.
    cue = '{"celsius": 1e999} ||| {"celsius": -1e400} ||| {"celsius": 21.5}'
    completion = relay.client().chat.completions.parse(model="gptomni", messages=ask(cue), response_format=Reading)
    assert completion.choices[0].message.parsed == Reading(celsius=21.5)
    assert len(relay.sim.received) == 3
    content = relay.client().chat.completions.create(
        model="gptomni", messages=ask('{"big": 1e999, "fine": 1} {"fine": 2}'), response_format={"type": "json_object"},
    ).choices[0].message.content
    assert json.loads(content or "") == {"fine": 2}


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_escape_is_no_text_and_asked_again(relay: Harness, stream: bool) -> None:
    # `"\ud800"` is valid JSON but decodes to no character UTF-8 can carry: passed on, it
    # broke the response (a 500, a cut stream). Such JSON is unusable, as prose is.
    cue = r'{"city": "\ud800", "celsius": 1} ||| {"city": "Paris \ud83d\ude00", "celsius": 21}'
    completion = relay.client().chat.completions.create(model="gptomni", messages=ask(cue), stream=stream,
                                                        response_format={"type": "json_object"})
    if stream:
        content = "".join(c.choices[0].delta.content or "" for c in completion)
    else:
        content = completion.choices[0].message.content or ""
    assert json.loads(content) == {"city": "Paris \N{GRINNING FACE}", "celsius": 21}  # a real pair is kept
    assert len(relay.sim.received) == 2


class Sky(enum.StrEnum):
    clear = "clear"
    cloudy = "cloudy"


class Observation(BaseModel):
    at: datetime.date
    celsius: float = Field(ge=-40)
    sky: Sky
    station: Weather
    tags: list[str] = Field(min_length=2)
    note: str | None


def test_the_demo_simulator_answers_structured_output_without_a_cue(relay: Harness) -> None:
    # A new user's first `parse()` in demo mode: the simulator reads the relay's JSON
    # instruction as a model would and answers the smallest value the schema accepts.
    hello = [{"role": "user", "content": "Weather in Paris"}]
    parsed = relay.client().chat.completions.parse(model="gptomni", messages=hello, response_format=Observation)
    observation = parsed.choices[0].message.parsed
    assert observation is not None and observation.celsius == -40 and observation.sky is Sky.clear
    assert observation.station == Weather(city="example", celsius=0) and len(observation.tags) == 2
    response = relay.client().responses.parse(model="gptomni", input="Weather in Paris", text_format=Weather)
    assert response.output_parsed == Weather(city="example", celsius=0)
    loose = relay.client().chat.completions.create(model="gptomni", messages=hello,
                                                   response_format={"type": "json_object"})
    assert json.loads(loose.choices[0].message.content or "")["answer"].startswith("Hello from the GPT-Omni simulator")
