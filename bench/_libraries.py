"""The model libraries loaded as Kaset's runtimes load them (the catalog's params), for the
direct side of a benchmark: the same files and settings as the gateway, in this process.

The libraries are imported on first use: each benchmark needs only some of them.
"""

from __future__ import annotations

from typing import Any

from kaset.registry.catalog import ModelSpec
from kaset.registry.repository import ModelRepository


def whisper_model(spec: ModelSpec, repo: ModelRepository) -> Any:
    """faster_whisper.WhisperModel with the catalog's compute_type and cpu_threads."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(repo.path_for(spec)), device="cpu",
                        compute_type=str(spec.params.get("compute_type", "int8")),
                        cpu_threads=int(spec.params.get("cpu_threads", 2)))


def piper_voice(spec: ModelSpec, repo: ModelRepository) -> Any:
    from piper import PiperVoice

    return PiperVoice.load(repo.path_for(spec) / str(spec.params["model_file"]))


def llama(spec: ModelSpec, repo: ModelRepository) -> Any:
    """llama_cpp.Llama with the catalog's n_ctx and n_threads (for batches too)."""
    from llama_cpp import Llama

    threads = int(spec.params["n_threads"])
    return Llama(model_path=str(repo.path_for(spec) / str(spec.params["model_file"])),
                 n_ctx=int(spec.params.get("n_ctx", 2048)), n_threads=threads, n_threads_batch=threads, verbose=False)


def llama_sampling(spec: ModelSpec) -> dict[str, Any]:
    """The runtime's sampling settings: llama-cpp-python's defaults unless the catalog says otherwise."""
    return {"top_k": int(spec.params.get("top_k", 40)), "min_p": float(spec.params.get("min_p", 0.05)),
            "repeat_penalty": float(spec.params.get("repeat_penalty", 1.0))}
