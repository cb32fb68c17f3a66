"""Piper neural text-to-speech (piper-tts 1.8, ONNX Runtime on the CPU).

A Piper voice file holds one speaker. The catalog names that speaker (`params.voice`) and
lists OpenAI's voice names as aliases of it, so stock OpenAI clients that always send a
voice such as "alloy" get this voice instead of an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import Synthesizer, Voice

if TYPE_CHECKING:
    from piper import PiperVoice


class PiperRuntime(Synthesizer):
    _voice: PiperVoice | None = None
    _meta: dict[str, Any] | None = None

    def load(self) -> None:
        from piper import PiperVoice

        if self.model_dir is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' has no installed files.")
        model_path = self.model_dir / str(self.params["model_file"])
        if not model_path.is_file():
            raise ModelUnavailable(f"Model '{self.spec.id}': voice file {model_path} is missing.")
        self._voice = PiperVoice.load(model_path)

    def unload(self) -> None:
        self._voice = None

    def warmup(self) -> None:
        for _ in self.synthesize("Hello.", None, 1.0):
            pass

    # --- voices -------------------------------------------------------------------------------

    @property
    def voice_id(self) -> str:
        return str(self.params.get("voice", "default"))

    def voices(self) -> list[Voice]:
        language = str(self._config_dict().get("language", {}).get("family", "en"))
        return [Voice(id=self.voice_id, language=language, name=self._display_name())]

    def accepted_voice_names(self) -> list[str]:
        """The voice id and every alias the catalog gives it."""
        aliases = [str(a) for a in self.params.get("voice_aliases", [])]
        return [self.voice_id, *aliases]

    def resolve_voice(self, voice: str | None) -> str:
        if voice is None or not voice.strip():
            return self.voice_id
        wanted = voice.strip().lower()
        if wanted in (name.lower() for name in self.accepted_voice_names()):
            return self.voice_id
        raise InvalidRequest(
            f"Model '{self.spec.id}' has no voice '{voice}'. Valid voices: {', '.join(self.accepted_voice_names())}.",
            param="voice",
        )

    def sample_rate(self, voice: str | None) -> int:
        self.resolve_voice(voice)
        if self._voice is not None:
            return int(self._voice.config.sample_rate)
        return int(self._config_dict().get("audio", {}).get("sample_rate", 22_050))

    # --- synthesis ----------------------------------------------------------------------------

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[bytes]:
        # Validate eagerly, so a bad request fails when called, not on the first chunk.
        self.resolve_voice(voice)
        if not text.strip():
            raise InvalidRequest("The input text is empty.", param="input")
        if not 0.25 <= speed <= 4.0:
            raise InvalidRequest(f"speed must be between 0.25 and 4.0, got {speed}.", param="speed")
        return self._chunks(text, speed)

    def _chunks(self, text: str, speed: float) -> Iterator[bytes]:
        from piper import SynthesisConfig

        piper_voice = self._loaded()
        # Scale the voice's own tuned length rather than replacing it.
        config = SynthesisConfig(length_scale=piper_voice.config.length_scale / speed)
        for chunk in piper_voice.synthesize(text, syn_config=config):
            yield chunk.audio_int16_bytes

    # --- helpers ------------------------------------------------------------------------------

    def _loaded(self) -> PiperVoice:
        if self._voice is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        return self._voice

    def _config_dict(self) -> dict[str, Any]:
        """The raw voice JSON (PiperConfig drops the language and dataset fields), read once.

        Read from disk rather than from the loaded voice so voices can be listed unloaded.
        """
        if self._meta is None:
            self._meta = _read_voice_json(self.model_dir, str(self.params["model_file"]))
        return self._meta

    def _display_name(self) -> str:
        config = self._config_dict()
        dataset = str(config.get("dataset", self.voice_id))
        locale = str(config.get("language", {}).get("code", ""))
        return f"{dataset} ({locale})" if locale else dataset


def _read_voice_json(model_dir: Path | None, model_file: str) -> dict[str, Any]:
    if model_dir is None:
        return {}
    try:
        data = json.loads((model_dir / f"{model_file}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
