"""What /v1/chat/completions and /v1/completions do with each OpenAI request field.

Every field OpenAI defines is one of three kinds (docs/api.md has the table):

- honoured: it changes the generation or the reply the way OpenAI documents;
- accepted: it cannot change the reply (`user`, `metadata`, caching hints, `store: false`,
  `parallel_tool_calls` without tools, `tool_choice: "none"`...), so it is taken and left;
- refused: a 400 in OpenAI's error envelope whose `param` names the field and whose message
  says what to send instead. A client that asked for tools, or for another service tier, must
  learn that it did not get them rather than receive free text as if it had.

Fields OpenAI does not define are refused too, as OpenAI refuses them ("Unrecognized request
argument supplied"): a misspelt `max_token` is a 400, not a silently longer reply.

Cost: a plain request (no undeclared field, none of the checked ones) pays one look at
`model_extra` and one `isdisjoint`; the fields Kaset only accepts or refuses are not declared on
the request models, so their validation costs nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from kaset.api.schemas.chat import ChatCompletionRequest, CompletionRequest, ResponseFormat
from kaset.api.serving.chat_messages import stops
from kaset.errors import InvalidRequest
from kaset.registry.handle import ModelHandle
from kaset.runtimes.base import ChatOption, GenerationParams
from kaset.runtimes.json_grammar import unenforceable

# Declared fields whose value must be looked at: a request that sets none of them is plain.
_CHAT_CHECKED = frozenset({"n", "logprobs", "top_logprobs", "response_format", "frequency_penalty",
                           "presence_penalty"})
_COMPLETION_CHECKED = frozenset({"n", "logprobs", "frequency_penalty", "presence_penalty"})
# OpenAI chat fields that cannot change the reply whatever their value: labels, caching and
# routing hints, and parallel_tool_calls (no tools are ever called).
_HARMLESS_CHAT = frozenset({"metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
                            "prompt_cache_options", "prediction", "parallel_tool_calls"})

_TOOLS_LATER = ("Kaset does not support tool calling yet: send the request without '{param}' (and without "
                "tool_choice), and describe the function in the messages if the model should answer in its shape.")


def refuse(param: str, message: str) -> NoReturn:
    raise InvalidRequest(message, param=param, code="unsupported_parameter")


def _refuse_unknown(name: str, route: str) -> NoReturn:
    raise InvalidRequest(
        f"Unrecognized request argument supplied: {name}. {route} takes OpenAI's fields (see /docs); "
        "remove it.", param=name, code="unknown_parameter",
    )


def prepare_chat(body: ChatCompletionRequest) -> tuple[GenerationParams, ModelNeeds | None]:
    """A chat request's generation parameters and what it needs of its model (None: nothing
    beyond the basics), after refusing (400) every field Kaset cannot honour."""
    if body.model_extra:
        for name, value in body.model_extra.items():
            _check_chat_extra(name, value)
    params = GenerationParams(max_tokens=body.max_completion_tokens or body.max_tokens,
                              temperature=body.temperature, top_p=body.top_p, stop=stops(body.stop),
                              seed=body.seed, reproducible=body.seed is not None and body.temperature > 0)
    if _CHAT_CHECKED.isdisjoint(body.model_fields_set):
        return params, None
    if body.top_logprobs and not body.logprobs:
        refuse("top_logprobs", "top_logprobs needs logprobs: true.")
    if body.modalities and "audio" in body.modalities:
        if body.n > 1:
            refuse("n", "A spoken reply (modalities with \"audio\") is one choice: send n: 1.")
        if body.logprobs:
            refuse("logprobs", "A spoken reply (modalities with \"audio\") has no token logprobs: leave logprobs "
                               "out.")
    params.logprobs, params.top_logprobs = bool(body.logprobs), body.top_logprobs or 0
    options = _sampling(body, params, params.logprobs)
    schema = None
    if body.response_format is not None and body.response_format.type != "text":
        params.json_schema, params.response_format = _json_reply(body.response_format)
        options["response_format"] = "response_format"
        if body.response_format.json_schema is not None:
            schema = body.response_format.json_schema.schema_
    return params, ModelNeeds(options, schema) if options else None


def prepare_completion(body: CompletionRequest) -> tuple[GenerationParams, ModelNeeds | None]:
    """The same for a text completion request."""
    if body.model_extra:
        for name, value in body.model_extra.items():
            _check_completion_extra(name, value, body)
    params = GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                              stop=stops(body.stop), seed=body.seed,
                              reproducible=body.seed is not None and body.temperature > 0)
    if _COMPLETION_CHECKED.isdisjoint(body.model_fields_set):
        return params, None
    if body.logprobs is not None and body.echo:
        refuse("logprobs", "logprobs with echo would need the prompt's log probabilities, which Kaset does not "
                           "compute: drop echo or logprobs.")
    params.logprobs, params.top_logprobs = body.logprobs is not None, body.logprobs or 0
    options = _sampling(body, params, params.logprobs)
    return params, ModelNeeds(options) if options else None


def _sampling(body: ChatCompletionRequest | CompletionRequest, params: GenerationParams,
              logprobs: bool) -> dict[ChatOption, str]:
    params.frequency_penalty = body.frequency_penalty or 0.0
    params.presence_penalty = body.presence_penalty or 0.0
    options: dict[ChatOption, str] = {"logprobs": "logprobs"} if logprobs else {}
    if body.frequency_penalty or body.presence_penalty:
        options["penalties"] = "frequency_penalty" if body.frequency_penalty else "presence_penalty"
    return options


def _check_chat_extra(name: str, value: Any) -> None:
    """An undeclared chat field: harmless, refused for its value, or unknown (refused)."""
    if name in _HARMLESS_CHAT:
        return
    if name in ("tools", "functions"):
        if value:  # an empty list asks for nothing
            refuse(name, _TOOLS_LATER.format(param=name))
    elif name in ("tool_choice", "function_call"):
        # With no tools, "auto" and "none" both mean a plain reply; anything else asks for a call.
        if value not in (None, "none", "auto"):
            refuse(name, _TOOLS_LATER.format(param=name))
    elif name == "store":
        if value:
            refuse("store", "Kaset does not store chat completions: send store: false or leave it out.")
    elif name == "service_tier":
        if value not in (None, "auto", "default"):
            refuse("service_tier", f"Kaset has one service tier; '{value}' cannot be honoured. Send 'auto' or "
                                   "'default', or leave service_tier out.")
    elif name == "reasoning_effort":
        if value not in (None, "none"):
            refuse("reasoning_effort", "The models here do not reason before answering; leave reasoning_effort "
                                       "out (or send 'none').")
    elif name == "verbosity":
        if value is not None:
            refuse("verbosity", "verbosity is not supported; ask for a short or long answer in the messages "
                                "instead.")
    elif name == "web_search_options":
        if value is not None:
            refuse("web_search_options", "Kaset cannot search the web; leave web_search_options out.")
    elif name == "moderation":
        if value is not None:
            refuse("moderation", "Kaset does not moderate requests or replies; leave moderation out.")
    elif name == "logit_bias":
        _check_logit_bias(value)
    else:
        _refuse_unknown(name, "/v1/chat/completions")


def _check_completion_extra(name: str, value: Any, body: CompletionRequest) -> None:
    if name == "logit_bias":
        _check_logit_bias(value)
    elif name == "suffix":
        if value:
            refuse("suffix", "Text insertion (suffix) is not supported: the models here only continue a prompt. "
                             "Leave suffix out.")
    elif name == "best_of":
        if value is not None and value != body.n:
            refuse("best_of", "best_of is not supported (Kaset does not rank candidates); leave it out or set it "
                              "equal to n.")
    else:
        _refuse_unknown(name, "/v1/completions")


def _check_logit_bias(value: Any) -> None:
    if value:
        refuse("logit_bias", "logit_bias is not supported (its token ids are a model's own); leave it out.")


# --- what the chosen model must be able to do ---------------------------------------------------


@dataclass(frozen=True)
class ModelNeeds:
    """What a request asks of its model beyond the basics, checked against the model a route
    picks (a fallback may lack what the first choice has)."""

    # Each option the model must honour, with the request field that needs it (named in a refusal).
    options: dict[ChatOption, str]
    # response_format's json_schema, which a grammar-constrained model must be able to hold the reply to.
    schema: dict[str, Any] | None = None


_CANNOT: dict[ChatOption, str] = {
    "response_format": "cannot constrain its reply to JSON (response_format): use a llama.cpp chat model or an "
                       "OpenAI-compatible provider, or leave response_format out",
    "logprobs": "does not report token log probabilities (logprobs): use a llama.cpp chat model, or leave "
                "logprobs out",
    "penalties": "does not take frequency_penalty or presence_penalty: use a llama.cpp chat model or an "
                 "OpenAI-compatible provider, or send 0",
}


async def require(model: ModelHandle, needs: ModelNeeds | None) -> None:
    """Refuse (400) a request whose needs `model` cannot honour; a plain request (None) costs nothing."""
    if needs is None:
        return
    info = await model.info()
    for option, param in needs.options.items():
        if option not in info.chat_options:
            refuse(param, f"The model '{model.name}' {_CANNOT[option]}.")
    if needs.schema is not None and info.supports_json_schema and (why := unenforceable(needs.schema)):
        refuse("response_format", f"The model '{model.name}' holds its reply to the schema with a grammar, which "
                                  f"cannot enforce all of it: {why}. A grammar holds type, properties, required, "
                                  "additionalProperties, enum, const, anyOf, $ref/$defs, items/prefixItems, "
                                  "minItems/maxItems, minLength/maxLength, an anchored pattern and the date, "
                                  "time, date-time and uuid formats.")


def refuse_needs(needs: ModelNeeds | None, why: str) -> None:
    """Refuse a request with needs on a path that honours none (`why` says which path)."""
    if needs is not None:
        param = next(iter(needs.options.values()))
        refuse(param, f"{why}, which cannot honour {param}; leave it out.")


def _json_reply(response_format: ResponseFormat) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the schema a grammar holds the reply to, the response_format a provider gets)."""
    spec = response_format.json_schema
    if response_format.type == "json_object":
        if spec is not None:
            refuse("response_format", "response_format.json_schema is read only with type json_schema; send "
                                      "{\"type\": \"json_schema\", \"json_schema\": {...}} or drop it.")
        return {"type": "object"}, {"type": "json_object"}
    if spec is None or spec.schema_ is None:
        refuse("response_format", "response_format type json_schema needs json_schema: {\"name\": ..., "
                                  "\"schema\": {...}} (the JSON schema the reply must follow).")
    return spec.schema_, response_format.model_dump(by_alias=True, exclude_none=True)
