"""Token log probabilities of a llama.cpp generation (`GenerationParams.logprobs`).

When `Llama.generate` yields a token, the context still holds the logits it was sampled from
(the last decoded position's; llama.cpp keeps them until the next decode), so they are read
there, without `logits_all` (which would keep a row per context position, n_ctx x n_vocab
floats). They are the model's raw distribution: a grammar, the script guard and the sampler
settings (temperature, top_k, min_p) narrow what may be *sampled*, not these numbers, as with
OpenAI's and vLLM's logprobs. One log-softmax over the vocabulary per token (~0.1 ms for 49k
tokens), paid only by requests that ask.

The runtime's token loop records each token with where its text starts in the reply and takes,
with each streamed piece, the tokens whose text starts in it, so a stream's logprobs line up
with its text and a reply cut at a stop string drops the tokens after the cut.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kaset.runtimes.base import TokenLogprob, TopLogprob


class TokenLogprobs:
    def __init__(self, llm: Any, top: int) -> None:
        self._llm = llm
        self._top = top
        self._n_vocab = int(llm.n_vocab())
        self._pending: list[TokenLogprob] = []

    def add(self, token: int, text_offset: int) -> None:
        """Record `token`, just sampled, whose text starts at `text_offset` in the reply."""
        logits = np.ctypeslib.as_array(self._llm._ctx.get_logits_ith(-1), shape=(self._n_vocab,))
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
        top: list[TopLogprob] = []
        if self._top:
            best = np.argpartition(logits, -self._top)[-self._top:]
            for candidate in best[np.argsort(-logits[best], kind="stable")]:
                text, data = self._text(int(candidate))
                top.append(TopLogprob(token=text, logprob=float(logits[candidate]) - log_total, token_bytes=data))
        text, data = self._text(token)
        self._pending.append(TokenLogprob(token=text, logprob=float(logits[token]) - log_total, token_bytes=data,
                                          top_logprobs=top, text_offset=text_offset))

    def take(self, end: int) -> list[TokenLogprob]:
        """The recorded tokens whose text starts before `end`, each returned once."""
        split = next((i for i, entry in enumerate(self._pending) if entry.text_offset >= end), len(self._pending))
        taken, self._pending = self._pending[:split], self._pending[split:]
        return taken

    def _text(self, token: int) -> tuple[str, list[int]]:
        data = bytes(self._llm.detokenize([token]))
        # A token may hold part of a character (byte-level BPE): its text shows U+FFFD, its bytes are exact.
        return data.decode("utf-8", errors="replace"), list(data)
