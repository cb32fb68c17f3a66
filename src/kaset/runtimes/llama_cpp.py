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

Script drift: Qwen-family models, asked in Thai or English, let Chinese characters (and
CJK punctuation such as "。") creep into the reply. When a conversation has no CJK text and
does not name a CJK language, the sampler is forbidden every token that would write CJK
(a -inf logit; the token ids are found once per load by scanning the vocabulary's bytes), so
the model writes the reply in another script instead of the reply being regenerated or cut
afterwards. The catalog param `script_guard: false` turns this off.
"""

from __future__ import annotations

import codecs
import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import ChatModel, ChatOption, Generation, GenerationChunk, GenerationParams, TokenLogprob
from kaset.runtimes.json_grammar import gbnf as json_gbnf
from kaset.runtimes.llama_logprobs import TokenLogprobs

DEFAULT_N_CTX = 2048
# llama-cpp-python's own sampling defaults; the OpenAI API has no knob for them.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0
# llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random": OpenAI's seeds (any integer) are
# folded into 0..0xFFFFFFFE, so every seed is reproducible.
_SEEDS = 0xFFFFFFFF

# CJK in a conversation's text: U+3000-U+D7FF (CJK punctuation, kana, Bopomofo, Hangul
# compatibility jamo, Han with extension A, Yi, Hangul syllables), Hangul jamo, CJK radicals,
# compatibility ideographs and forms, full- and halfwidth forms, and Han extensions B and up.
CJK_TEXT = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fff\u3000-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
    "\U00020000-\U0003ffff]"
)
# The same ranges as UTF-8 bytes. Byte-level BPE vocabularies split rare characters into
# pieces, and a piece holding a CJK lead byte (0xE3-0xED start U+3000-U+DFFF) can only begin a
# CJK character; pieces of continuation bytes alone belong to no script and stay allowed.
_CJK_BYTES = re.compile(
    b"[\xe3-\xed]|\xe1[\x84-\x87]|\xe2[\xba-\xbf]|\xef[\xa4-\xab]|\xef\xb8[\xb0-\xbf]"
    b"|\xef\xb9[\x80-\x8f]|\xef[\xbc-\xbe]|\xef\xbf[\x80-\xaf]|\xf0[\xa0-\xb3]"
)
# A conversation that asks for a CJK language ("translate to Japanese") keeps every token.
_CJK_LANGUAGE_NAMES = re.compile(
    r"\b(?:chinese|mandarin|cantonese|japanese|korean|kanji|hanzi|hiragana|katakana|hangul)\b"
    r"|ภาษาจีน|ภาษาญี่ปุ่น|ภาษาเกาหลี|อักษรจีน|คันจิ",
    re.IGNORECASE,
)


@dataclass
class _Request:
    tokens: list[int]
    max_tokens: int
    params: GenerationParams
    stops: list[str] = field(default_factory=list)
    # Forbid CJK tokens (see the module docstring).
    guard_script: bool = False


class LlamaCppRuntime(ChatModel):
    """params: model_file (required), n_ctx (default 2048), n_threads (default: llama.cpp's
    choice), seed (default for requests without one), top_k, min_p, repeat_penalty,
    chat_template (overrides the one in the GGUF file), script_guard (default true)."""

    _llm: Any = None
    supports_json_schema = True  # through a llama.cpp grammar built from the schema
    chat_options: frozenset[ChatOption] = frozenset({"response_format", "logprobs", "penalties"})
    # Typed loosely: its signature wants llama-cpp-python's TypedDict messages.
    _formatter: Any = None
    # Token ids whose bytes write CJK, forbidden in conversations without CJK; empty: no guard.
    _cjk_tokens: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)

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
        guarded = bool(self.params.get("script_guard", True))
        self._cjk_tokens = cjk_token_ids(llm) if guarded else np.empty(0, dtype=np.intp)
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

    @property
    def cjk_tokens(self) -> npt.NDArray[np.intp]:
        """The token ids the script guard forbids in conversations without CJK (empty when it is off)."""
        return self._cjk_tokens

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
        request = self._request(tokens, params, [*params.stop, *template_stops], "messages")
        request.guard_script = self._should_guard(str(m.get("content") or "") for m in messages)
        return request

    def _completion_request(self, prompt: str, params: GenerationParams) -> _Request:
        llm = self._loaded()
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not tokens:
            # Sampling needs at least one evaluated token; BOS is the natural "nothing yet".
            tokens = [llm.token_bos()]
        request = self._request(tokens, params, list(params.stop), "prompt")
        request.guard_script = self._should_guard([prompt])
        return request

    def _should_guard(self, texts: Iterable[str]) -> bool:
        return len(self._cjk_tokens) > 0 and not any(wants_cjk(text) for text in texts)

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
        processors = [_forbid(self._cjk_tokens)] if request.guard_script else None
        logprobs = TokenLogprobs(llm, params.top_logprobs) if params.logprobs else None
        with self._lock:
            seed = params.seed if params.seed is not None else random.randrange(2**31)
            llm.set_seed(seed % _SEEDS)
            if params.reproducible:
                llm.reset()
            tokens = (
                llm.generate(
                    request.tokens,
                    temp=max(params.temperature, 0.0),
                    top_p=params.top_p,
                    grammar=grammar,
                    logits_processor=processors,
                    frequency_penalty=params.frequency_penalty,
                    presence_penalty=params.presence_penalty,
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
                    if logprobs is not None:
                        logprobs.add(token, len(text))
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
                            yield GenerationChunk(text=text[emitted:safe], logprobs=_taken(logprobs, safe))
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
            yield GenerationChunk(text=text[emitted:], logprobs=_taken(logprobs, len(text)))
        yield GenerationChunk(
            text="",
            finish_reason=finish,
            prompt_tokens=len(request.tokens),
            completion_tokens=n_generated,
        )


def wants_cjk(text: str) -> bool:
    """Whether a conversation's text is (or asks for) Chinese, Japanese or Korean."""
    return bool(CJK_TEXT.search(text) or _CJK_LANGUAGE_NAMES.search(text))


def cjk_token_ids(llm: Any) -> npt.NDArray[np.intp]:
    """The ids of the vocabulary's tokens whose bytes write CJK (about 0.3 s for Qwen's 152k)."""
    return np.array(
        [token for token in range(llm.n_vocab()) if _CJK_BYTES.search(llm.detokenize([token]))], dtype=np.intp
    )


def _forbid(tokens: npt.NDArray[np.intp]) -> Callable[[Any, npt.NDArray[np.single]], npt.NDArray[np.single]]:
    """A logits processor that makes `tokens` impossible to sample.

    llama-cpp-python runs it first in the sampler chain, where the logits are still indexed
    by token id."""

    def processor(_input_ids: Any, logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        logits[tokens] = -np.inf
        return logits

    return processor


def _grammar(schema: dict[str, Any] | None) -> Any:
    """A llama.cpp grammar that only lets the sampler pick tokens following `schema` (or None).

    llama-cpp-python converts the schema to GBNF (types, required properties, enums, minItems/
    maxItems, minLength/maxLength); what GBNF cannot say (uniqueItems, formats it does not know)
    is left to the caller's validation."""
    if schema is None:
        return None
    from llama_cpp import LlamaGrammar

    try:
        # llama-cpp-python's conversion (from_json_schema's), with JSON's string characters (json_grammar.gbnf).
        return LlamaGrammar.from_string(json_gbnf(schema), verbose=False)
    except Exception as exc:  # the converter raises bare Exceptions/AssertionErrors on unknown constructs
        # The schema is a request's response_format (or a pipeline's own, whose caller reads the message).
        raise InvalidRequest(f"The JSON schema cannot be turned into a grammar: {exc}",
                             param="response_format") from exc


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


def _taken(logprobs: TokenLogprobs | None, end: int) -> list[TokenLogprob] | None:
    return logprobs.take(end) if logprobs is not None else None


def _collect(chunks: Iterator[GenerationChunk]) -> Generation:
    parts: list[str] = []
    last = GenerationChunk(text="")
    logprobs: list[TokenLogprob] | None = None
    for chunk in chunks:
        parts.append(chunk.text)
        if chunk.logprobs is not None:
            logprobs = logprobs if logprobs is not None else []
            logprobs.extend(chunk.logprobs)
        last = chunk
    return Generation(
        text="".join(parts),
        finish_reason=last.finish_reason or "stop",
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        logprobs=logprobs,
    )
