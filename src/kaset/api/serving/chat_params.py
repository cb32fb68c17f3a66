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

Cost: a request that sets none of the checked fields pays two set operations
(`model_extra`, `model_fields_set.isdisjoint`), nothing per field.
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

# Fields whose value must be looked at: a request that sets none of them is plain.
_CHAT_CHECKED = frozenset({
    "n", "logprobs", "top_logprobs", "response_format", "frequency_penalty", "presence_penalty", "logit_bias",
    "store", "service_tier", "reasoning_effort", "verbosity", "tools", "tool_choice", "functions",
    "function_call", "web_search_options", "moderation",
})
_COMPLETION_CHECKED = frozenset({
    "n", "logprobs", "frequency_penalty", "presence_penalty", "logit_bias", "best_of", "suffix",
})

_TOOLS_LATER = ("Kaset does not support tool calling yet: send the request without '{param}' (and without "
                "tool_choice), and describe the function in the messages if the model should answer in its shape.")


def refuse(param: str, message: str) -> NoReturn:
    raise InvalidRequest(message, param=param, code="unsupported_parameter")


def _refuse_unknown(extra: dict[str, object], route: str) -> NoReturn:
    name = next(iter(extra))
    raise InvalidRequest(
        f"Unrecognized request argument supplied: {name}. {route} takes OpenAI's fields (see /docs); "
        "remove it.", param=name, code="unknown_parameter",
    )


def check_chat_fields(body: ChatCompletionRequest) -> None:
    """Refuse (400) every field of a chat request that Kaset cannot honour and that could change the reply."""
    if body.model_extra:
        _refuse_unknown(body.model_extra, "/v1/chat/completions")
    if _CHAT_CHECKED.isdisjoint(body.model_fields_set):
        return
    if body.tools:
        refuse("tools", _TOOLS_LATER.format(param="tools"))
    if body.functions:
        refuse("functions", _TOOLS_LATER.format(param="functions"))
    # With no tools, "auto" and "none" both mean a plain reply; anything else asks for a call.
    if body.tool_choice not in (None, "none", "auto"):
        refuse("tool_choice", _TOOLS_LATER.format(param="tool_choice"))
    if body.function_call not in (None, "none", "auto"):
        refuse("function_call", _TOOLS_LATER.format(param="function_call"))
    if body.store:
        refuse("store", "Kaset does not store chat completions: send store: false or leave it out.")
    if body.service_tier not in (None, "auto", "default"):
        refuse("service_tier", f"Kaset has one service tier; '{body.service_tier}' cannot be honoured. Send "
                               "'auto' or 'default', or leave service_tier out.")
    if body.reasoning_effort not in (None, "none"):
        refuse("reasoning_effort", "The models here do not reason before answering; leave reasoning_effort out "
                                   "(or send 'none').")
    if body.verbosity is not None:
        refuse("verbosity", "verbosity is not supported; ask for a short or long answer in the messages instead.")
    if body.web_search_options is not None:
        refuse("web_search_options", "Kaset cannot search the web; leave web_search_options out.")
    if body.moderation is not None:
        refuse("moderation", "Kaset does not moderate requests or replies; leave moderation out.")
    if body.logprobs:
        refuse("logprobs", "logprobs are not supported yet; leave logprobs out or send false.")
    if body.top_logprobs:
        refuse("top_logprobs", "top_logprobs needs logprobs: true, which is not supported yet.")
    _check_sampling(body)


def check_completion_fields(body: CompletionRequest) -> None:
    """The same for a text completion request."""
    if body.model_extra:
        _refuse_unknown(body.model_extra, "/v1/completions")
    if _COMPLETION_CHECKED.isdisjoint(body.model_fields_set):
        return
    if body.suffix:
        refuse("suffix", "Text insertion (suffix) is not supported: the models here only continue a prompt. "
                         "Leave suffix out.")
    if body.best_of is not None and body.best_of != body.n:
        refuse("best_of", "best_of is not supported (Kaset does not rank candidates); leave it out or set it "
                          "equal to n.")
    if body.logprobs is not None:
        refuse("logprobs", "logprobs are not supported yet; leave logprobs out.")
    _check_sampling(body)


def _check_sampling(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.n > 1:
        refuse("n", "n > 1 is not supported yet: send one request per reply.")
    if body.frequency_penalty:
        refuse("frequency_penalty", "frequency_penalty is not supported yet; leave it out or send 0.")
    if body.presence_penalty:
        refuse("presence_penalty", "presence_penalty is not supported yet; leave it out or send 0.")
    if body.logit_bias:
        refuse("logit_bias", "logit_bias is not supported (its token ids are a model's own); leave it out.")


# --- what the chosen model must be able to do ---------------------------------------------------


@dataclass(frozen=True)
class ModelNeeds:
    """What a request asks of its model beyond the basics, checked against the model a route
    picks (a fallback may lack what the first choice has)."""

    options: frozenset[ChatOption]
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
    for option in ("response_format", "logprobs", "penalties"):
        if option in needs.options and option not in info.chat_options:
            refuse(_param_of(option), f"The model '{model.name}' {_CANNOT[option]}.")
    if needs.schema is not None and info.supports_json_schema and (why := unenforceable(needs.schema)):
        refuse("response_format", f"The model '{model.name}' holds its reply to the schema with a grammar, which "
                                  f"cannot enforce all of it: {why}. A grammar holds type, properties, required, "
                                  "additionalProperties, enum, const, anyOf, $ref/$defs, items/prefixItems, "
                                  "minItems/maxItems, minLength/maxLength, an anchored pattern and the date, "
                                  "time, date-time and uuid formats.")


def refuse_needs(needs: ModelNeeds | None, why: str) -> None:
    """Refuse a request with needs on a path that honours none (`why` says which path)."""
    if needs is not None:
        option = next(o for o in ("response_format", "logprobs", "penalties") if o in needs.options)
        refuse(_param_of(option), f"{why}, which cannot honour {_param_of(option)}; leave it out.")


def _param_of(option: ChatOption) -> str:
    return option if option != "penalties" else "frequency_penalty/presence_penalty"


def chat_needs(body: ChatCompletionRequest) -> ModelNeeds | None:
    """What a (checked) chat request needs of its model, or None for a plain one."""
    if _CHAT_CHECKED.isdisjoint(body.model_fields_set):
        return None
    options: set[ChatOption] = set()
    schema = None
    if body.response_format is not None and body.response_format.type != "text":
        options.add("response_format")
        if body.response_format.json_schema is not None:
            schema = body.response_format.json_schema.schema_
    return ModelNeeds(frozenset(options), schema) if options else None


def chat_generation_params(body: ChatCompletionRequest) -> GenerationParams:
    params = GenerationParams(
        max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, stop=stops(body.stop), seed=body.seed,
    )
    if body.response_format is not None and body.response_format.type != "text":
        params.json_schema, params.response_format = _json_reply(body.response_format)
    return params


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
