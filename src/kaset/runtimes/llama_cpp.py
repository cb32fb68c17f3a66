"""Chat and text completion with GGUF models through llama-cpp-python.

The chat template comes from the GGUF file (`tokenizer.chat_template`), rendered with
llama-cpp-python's own Jinja formatter, exactly as `create_chat_completion` would. The
token loop, though, is ours, on top of `Llama.generate`: `create_completion` reports no
token counts when streaming and handles stop strings differently in its streaming and
non-streaming paths. One loop serves all four methods, so a streamed reply is the
non-streamed reply cut into pieces, and the counts are the tokens actually generated.

Thread safety: a `Llama` object holds one KV cache and one sampler and must not be used
by two calls at once. The model manager runs at most `max_concurrent` (1 for llama.cpp
models) calls at a time; a lock here also serialises generation, held by a stream from
its first chunk until it is exhausted or closed. A caller that abandons a stream should
`close()` it (dropping the last reference does that in CPython) so the lock is released.

Requests are checked before any work starts, so a stream's errors surface when the
method is called, not at the first chunk: a prompt that leaves no room in the context
raises InvalidRequest. `max_tokens` larger than the room left is cut to fit (the reply
then ends with finish_reason "length"); `max_tokens=None` means "until the context is full".
"""

from __future__ import annotations

import codecs
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import ChatModel, Generation, GenerationChunk, GenerationParams

DEFAULT_N_CTX = 2048
# llama-cpp-python's own sampling defaults; the OpenAI API has no knob for them.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0


@dataclass
class _Request:
    tokens: list[int]
    max_tokens: int
    params: GenerationParams
    stops: list[str] = field(default_factory=list)


class LlamaCppRuntime(ChatModel):
    """params: model_file (required), n_ctx (default 2048), n_threads (default: llama.cpp's
    choice), seed (default for requests without one), top_k, min_p, repeat_penalty,
    chat_template (overrides the one in the GGUF file)."""

    _llm: Any = None
    supports_json_schema = True  # through a llama.cpp grammar built from the schema
    # Typed loosely: its signature wants llama-cpp-python's TypedDict messages.
    _formatter: Any = None

    def load(self) -> None:
        if self.model_dir is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' has no installed files.")
        import llama_cpp
        from llama_cpp import llama_chat_format

        path = self.model_dir / self.params["model_file"]
        if not path.is_file():
            raise ModelUnavailable(f"Model '{self.spec.id}': {path} is missing; reinstall the model.")
        threads = self.params.get("n_threads")
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": int(self.params.get("n_ctx", DEFAULT_N_CTX)),
            "verbose": False,
        }
        if threads:
            kwargs["n_threads"] = kwargs["n_threads_batch"] = int(threads)
        if self.params.get("seed") is not None:
            kwargs["seed"] = int(self.params["seed"])
        llm = llama_cpp.Llama(**kwargs)

        def token_text(token: int) -> str:
            return str(llm._model.token_get_text(token)) if token != -1 else ""

        template = (
            self.params.get("chat_template")
            or llm.metadata.get("tokenizer.chat_template")
            or llama_chat_format.CHATML_CHAT_TEMPLATE
        )
        eos = llm.token_eos()
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(eos),
            bos_token=token_text(llm.token_bos()),
            stop_token_ids=[eos],
        )
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
        self._sampling = {
            "top_k": int(self.params.get("top_k", DEFAULT_TOP_K)),
            "min_p": float(self.params.get("min_p", DEFAULT_MIN_P)),
            "repeat_penalty": float(self.params.get("repeat_penalty", DEFAULT_REPEAT_PENALTY)),
        }
        self._lock = threading.Lock()
        self._llm = llm

    def unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            with self._lock:
                llm.close()

    def warmup(self) -> None:
        self.complete("Hello", GenerationParams(max_tokens=1, temperature=0.0))

    @property
    def context_length(self) -> int:
        return int(self._loaded().n_ctx())

    # --- the four entry points ------------------------------------------------------------

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation:
        return _collect(self._generate(self._chat_request(messages, params)))

    def chat_stream(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._generate(self._chat_request(messages, params))

    def complete(self, prompt: str, params: GenerationParams) -> Generation:
        return _collect(self._generate(self._completion_request(prompt, params)))

    def complete_stream(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._generate(self._completion_request(prompt, params))

    # --- requests -------------------------------------------------------------------------

    def _loaded(self) -> Any:
        if self._llm is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        return self._llm

    def _chat_request(self, messages: list[dict[str, str]], params: GenerationParams) -> _Request:
        llm = self._loaded()
        if not messages:
            raise InvalidRequest("'messages' must contain at least one message.", param="messages")
        try:
            formatted = self._formatter(messages=messages)
        except Exception as exc:  # the template's raise_exception() and Jinja errors
            raise InvalidRequest(f"The messages do not fit this model's chat template: {exc}") from exc
        # The template writes BOS itself where the model wants one; special=True parses its
        # <|im_start|>-style markers as the special tokens they are.
        tokens = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
        template_stops = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop or ""]
        return self._request(tokens, params, [*params.stop, *template_stops], "messages")

    def _completion_request(self, prompt: str, params: GenerationParams) -> _Request:
        llm = self._loaded()
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not tokens:
            # Sampling needs at least one evaluated token; BOS is the natural "nothing yet".
            tokens = [llm.token_bos()]
        return self._request(tokens, params, list(params.stop), "prompt")

    def _request(self, tokens: list[int], params: GenerationParams, stops: list[str], what: str) -> _Request:
        n_ctx = self.context_length
        room = n_ctx - len(tokens)
        if room <= 0:
            raise InvalidRequest(
                f"The {what} take {len(tokens)} tokens, the model's context is {n_ctx} tokens "
                "(prompt and reply together). Shorten the input.",
                param=what,
                code="context_length_exceeded",
            )
        if params.max_tokens is not None and params.max_tokens < 0:
            raise InvalidRequest("max_tokens must not be negative.", param="max_tokens")
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        return _Request(tokens, max_tokens, params, [s for s in dict.fromkeys(stops) if s])

    # --- the token loop -------------------------------------------------------------------

    def _generate(self, request: _Request) -> Iterator[GenerationChunk]:
        llm = self._loaded()
        params = request.params
        stops = request.stops
        longest_stop = max((len(s) for s in stops), default=0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        emitted = 0  # characters of `text` already yielded
        n_generated = 0
        finish: Literal["stop", "length"] = "length"
        stopped_by_string = False
        grammar = _grammar(params.json_schema)
        with self._lock:
            seed = params.seed if params.seed is not None else random.randrange(2**31)
            llm.set_seed(seed)
            tokens = (
                llm.generate(
                    request.tokens,
                    temp=max(params.temperature, 0.0),
                    top_p=params.top_p,
                    grammar=grammar,
                    **self._sampling,
                )
                if request.max_tokens > 0
                else iter(())
            )
            try:
                for token in tokens:
                    if self._is_eog(token):
                        finish = "stop"
                        break
                    n_generated += 1
                    piece = decoder.decode(llm.detokenize([token]))
                    if piece:
                        searched_from = max(0, len(text) - longest_stop + 1)
                        text += piece
                        cut = _first_stop(text, stops, searched_from)
                        if cut is not None:
                            text = text[:cut]
                            finish = "stop"
                            stopped_by_string = True
                            break
                        # Hold back a tail that may be the start of a stop string.
                        safe = len(text) - _partial_stop(text, stops)
                        if safe > emitted:
                            yield GenerationChunk(text=text[emitted:safe])
                            emitted = safe
                    if n_generated >= request.max_tokens:
                        break
            finally:
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()
        if not stopped_by_string:
            # A reply cut off mid-character ends in U+FFFD rather than losing the bytes silently.
            text += decoder.decode(b"", final=True)
        if len(text) > emitted:
            yield GenerationChunk(text=text[emitted:])
        yield GenerationChunk(
            text="",
            finish_reason=finish,
            prompt_tokens=len(request.tokens),
            completion_tokens=n_generated,
        )


def _grammar(schema: dict[str, Any] | None) -> Any:
    """A llama.cpp grammar that only lets the sampler pick tokens following `schema` (or None).

    llama-cpp-python converts the schema to GBNF (types, required properties, enums, minItems/
    maxItems, minLength/maxLength); what GBNF cannot say (uniqueItems, formats it does not know)
    is left to the caller's validation."""
    if schema is None:
        return None
    from llama_cpp import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:  # the converter raises bare Exceptions/AssertionErrors on unknown constructs
        raise InvalidRequest(f"The JSON schema cannot be turned into a grammar: {exc}", param="json_schema") from exc


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _collect(chunks: Iterator[GenerationChunk]) -> Generation:
    parts: list[str] = []
    last = GenerationChunk(text="")
    for chunk in chunks:
        parts.append(chunk.text)
        last = chunk
    return Generation(
        text="".join(parts),
        finish_reason=last.finish_reason or "stop",
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
    )
