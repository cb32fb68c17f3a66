"""response_format json_object and json_schema: SmolLM2-135M's replies are held to the schema by a
llama.cpp grammar (the machinery /v1/listings uses), providers get it passed on, and what cannot
be honoured is a 400 naming response_format."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pydantic
import pytest

from tests.fixtures.chat_gateway import ChatGateway, chat_gateway


@pytest.fixture(scope="module")
def gw(installed: Callable[[str], object], models_dir: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatGateway]:
    with chat_gateway(installed, models_dir, tmp_path_factory.mktemp("chat-structured")) as gateway:
        yield gateway


def _ask(gw: ChatGateway, question: str, response_format: dict[str, Any], model: str = "smollm2-135m",
         **fields: Any) -> Any:
    return gw.client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 200,
        "response_format": response_format, **fields})


def _schema_format(schema: dict[str, Any], name: str = "reply") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


CROP = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "days_to_harvest": {"type": "integer"},
        "season": {"type": "string", "enum": ["wet", "dry", "any"]},
    },
    "required": ["name", "days_to_harvest", "season"],
    "additionalProperties": False,
}
PESTS = {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 2, "maxItems": 4}
PLAN = {
    "type": "object",
    "$defs": {"step": {"type": "object", "properties": {"day": {"type": "integer"},
                                                         "task": {"type": "string", "maxLength": 40}},
                       "required": ["day", "task"], "additionalProperties": False}},
    "properties": {
        "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1, "maxItems": 3},
        "note": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]},
        "organic": {"type": "boolean"},
    },
    "required": ["steps", "note", "organic"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(("question", "schema"), [
    ("Describe rice as a crop.", CROP),
    ("List pests of mango trees.", PESTS),
    ("Plan the first week of planting tomatoes.", PLAN),
])
def test_json_schema_replies_follow_the_schema(gw: ChatGateway, question: str, schema: dict[str, Any]) -> None:
    response = _ask(gw, question, _schema_format(schema))
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_json_object_is_any_object(gw: ChatGateway) -> None:
    response = _ask(gw, "Give the name and colour of a ripe mango as JSON.", {"type": "json_object"})
    assert response.status_code == 200, response.text
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"]), dict)


def test_streamed_reply_follows_the_schema(gw: ChatGateway) -> None:
    with gw.client.stream("POST", "/v1/chat/completions", json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": "Describe maize."}], "temperature": 0,
            "max_tokens": 200, "stream": True, "response_format": _schema_format(CROP)}) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    jsonschema.validate(json.loads(text), CROP)


class Harvest(pydantic.BaseModel):
    crop: str = pydantic.Field(max_length=30)
    kilograms: int
    quality: Literal["good", "fair", "poor"]
    note: str | None = pydantic.Field(max_length=40)


def test_openai_sdk_parse(gw: ChatGateway) -> None:
    """The SDK's parse() sends its strict schema (titles, $defs-free, anyOf for Optional) and reads `.parsed`."""
    completion = gw.sdk().chat.completions.parse(
        model="smollm2-135m", messages=[{"role": "user", "content": "Record a harvest of 12 kg of good rice."}],
        response_format=Harvest, temperature=0, max_tokens=200)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Harvest)


@pytest.mark.parametrize(("schema", "reason"), [
    ({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}, "'minimum'"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "'oneOf'"),
    ({"type": "string", "pattern": "[0-9]+"}, "anchored"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}, "'b'"),
    ({"type": "string", "format": "email"}, "'email'"),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "keep one"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}]}, "anyOf"),
])
def test_schemas_a_grammar_cannot_hold_are_refused(gw: ChatGateway, schema: dict[str, Any], reason: str) -> None:
    response = _ask(gw, "Anything.", _schema_format(schema))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and reason in error["message"], error


def test_models_that_cannot_constrain_refuse(gw: ChatGateway) -> None:
    response = _ask(gw, "rice", _schema_format(CROP), model="echo")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format" and "'echo'" in error["message"]
    assert _ask(gw, "rice", {"type": "json_object"}, model="echo").status_code == 400


def test_malformed_response_formats(gw: ChatGateway) -> None:
    no_schema = _ask(gw, "rice", {"type": "json_schema", "json_schema": {"name": "x"}})
    assert no_schema.status_code == 400 and no_schema.json()["error"]["param"] == "response_format"
    assert _ask(gw, "rice", {"type": "xml"}).status_code == 422
    assert _ask(gw, "rice", {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}
                ).status_code == 422


def test_providers_get_response_format_as_sent(gw: ChatGateway) -> None:
    sent = _schema_format({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}})
    response = _ask(gw, "rice", sent, model="prov-chat")
    assert response.status_code == 200, response.text  # the upstream decides what it can enforce
    assert gw.upstream.requests[-1]["body"]["response_format"] == sent
    _ask(gw, "rice", {"type": "json_object"}, model="prov-chat")
    assert gw.upstream.requests[-1]["body"]["response_format"] == {"type": "json_object"}
    plain = gw.client.post("/v1/chat/completions", json={"model": "prov-chat",
                                                         "messages": [{"role": "user", "content": "rice"}]})
    assert plain.status_code == 200 and "response_format" not in gw.upstream.requests[-1]["body"]
