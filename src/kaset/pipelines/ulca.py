"""Pipelines in the ULCA/Bhashini shape: a list of tasks (asr, translation, tts, and Kaset's own
llm, advice, diagnose, describe), each feeding its output to the next.

The request and response follow Bhashini's "pipeline compute" call: `pipelineTasks` of
{taskType, config: {language: {sourceLanguage, targetLanguage}, serviceId, ...}}, `inputData`
with `input: [{source}]`, `audio: [{audioContent}]` (and Kaset's `image: [{imageContent}]`), and a
`pipelineResponse` with one entry per task: {taskType, config, output: [{source, target}],
audio: [{audioContent}] | null}. Every input item flows through the chain on its own, so two
texts give two outputs per task.

The whole chain is checked before any task runs (`Pipeline.plan`): each task must get the kind of
data it takes (text, audio or an image) from the one before it (or from `inputData` for the
first), the languages must line up (a translation from 'es' after speech in English is refused),
and a model must exist for each step (a voice for tts's language, a translation pair, a
transcriber). A problem is a 400 naming the task by its index.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from kaset import usage
from kaset.errors import InvalidRequest, KasetError, PayloadTooLarge
from kaset.language import Language
from kaset.media.image import decode_image
from kaset.pipelines.advice import SUPPORTED_LANGUAGES, AdviceQuery, AdviceService
from kaset.pipelines.describe import DescribeService
from kaset.pipelines.diagnose import DiagnosisService
from kaset.pipelines.speech import SpeechService
from kaset.registry.catalog import ModelSpec
from kaset.registry.handle import ModelHandle
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router
from kaset.runtimes.base import GenerationParams

TaskType = Literal["asr", "translation", "tts", "llm", "advice", "diagnose", "describe"]
Kind = Literal["text", "audio", "image"]

# What each task takes and gives.
TASK_IO: dict[str, tuple[Kind, Kind]] = {
    "asr": ("audio", "text"), "translation": ("text", "text"), "tts": ("text", "audio"),
    "llm": ("text", "text"), "advice": ("text", "text"), "diagnose": ("image", "text"),
    "describe": ("image", "text"),
}
MAX_TASKS = 8
MAX_ITEMS = 16  # input items per request; each goes through the whole chain
AUDIO_FORMATS = ("wav", "mp3", "flac", "opus")
LLM_SYSTEM = "You are a helpful assistant. Answer briefly."
LLM_MAX_TOKENS = 200


@dataclass
class Task:
    type: str
    config: dict[str, Any]


@dataclass
class Inputs:
    texts: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)


@dataclass
class Step:
    """A checked task: what it runs with, decided before anything runs."""

    index: int
    task: Task
    model: str | None = None
    source: str | None = None  # the language of the text it takes (None: not known until run time)
    target: str | None = None  # the language of what it gives
    voice: str | None = None
    audio_format: str = "wav"


@dataclass
class Item:
    """One input item's data between tasks."""

    text: str | None = None
    audio: bytes | None = None
    image: bytes | None = None
    language: str | None = None
    # Its position in inputData's list, for errors that name the field.
    position: int = 0


@dataclass
class StepResult:
    task_type: str
    config: dict[str, Any]
    output: list[dict[str, Any]] | None
    audio: list[dict[str, Any]] | None
    ms: float


@dataclass
class Limits:
    max_text_chars: int
    max_speech_chars: int
    max_upload_bytes: int
    max_image_pixels: int


def _where(index: int, task: Task) -> str:
    return f"pipelineTasks[{index}] ({task.type})"


def _fail(index: int, task: Task, message: str, *, field_: str = "", code: str = "invalid_pipeline") -> InvalidRequest:
    param = f"pipelineTasks[{index}]" + (f".config.{field_}" if field_ else "")
    return InvalidRequest(f"{_where(index, task)}: {message}", param=param, code=code)


def decode_base64(value: str, param: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{param}' is not valid base64.", param=param) from None


class Pipeline:
    def __init__(self, *, speech: SpeechService, router: Router, manager: ModelManager, advisor: AdviceService,
                 diagnoser: DiagnosisService, describer: DescribeService, limits: Limits,
                 check_model: Callable[[str], None] = lambda name: None) -> None:
        self.speech = speech
        self.router = router
        self.manager = manager
        self.advisor = advisor
        self.diagnoser = diagnoser
        self.describer = describer
        self.limits = limits
        # The caller's model allowlist (kaset.api.deps.check_model_allowed), applied to each model chosen.
        self.check_model = check_model

    # --- checking the chain --------------------------------------------------------------------

    async def plan(self, tasks: list[Task], inputs: Inputs) -> list[Step]:
        if not tasks:
            raise InvalidRequest("'pipelineTasks' is empty; give at least one task.", param="pipelineTasks")
        if len(tasks) > MAX_TASKS:
            raise InvalidRequest(f"{len(tasks)} tasks; a pipeline may have at most {MAX_TASKS}.",
                                 param="pipelineTasks")
        first_kind = TASK_IO[tasks[0].type][0] if tasks[0].type in TASK_IO else "text"
        given: dict[str, list[Any]] = {"text": inputs.texts, "audio": inputs.audio, "image": inputs.images}
        if not given[first_kind]:
            where = {"text": "inputData.input[].source", "audio": "inputData.audio[].audioContent",
                     "image": "inputData.image[].imageContent"}[first_kind]
            raise _fail(0, tasks[0], f"it takes {first_kind}, but the request has none: send it in {where}.",
                        code="missing_input")
        if len(given[first_kind]) > MAX_ITEMS:
            raise InvalidRequest(f"{len(given[first_kind])} input items; at most {MAX_ITEMS} per request.",
                                 param="inputData")
        steps: list[Step] = []
        kind: Kind = first_kind
        language: str | None = None
        for index, task in enumerate(tasks):
            if task.type not in TASK_IO:
                raise _fail(index, task, f"unknown taskType; use one of {', '.join(TASK_IO)}.")
            takes, gives = TASK_IO[task.type]
            if takes != kind:
                before = f"pipelineTasks[{index - 1}] ({tasks[index - 1].type}) gives {kind}"
                raise _fail(index, task, f"it takes {takes}, but {before}. "
                                         f"{self._hint(task.type, kind)}", code="invalid_pipeline")
            step = Step(index=index, task=task)
            await getattr(self, f"_plan_{task.type}")(step, language)
            steps.append(step)
            kind, language = gives, step.target
        return steps

    @staticmethod
    def _hint(task_type: str, kind: str) -> str:
        if task_type == "asr":
            return "Speech recognition needs audio: put it first, with inputData.audio."
        if TASK_IO[task_type][0] == "image":
            return f"'{task_type}' needs a photo: put it first, with inputData.image."
        if kind == "audio":
            return "A tts task gives audio, which only an asr task can take."
        return ""

    def _languages(self, step: Step, current: str | None) -> tuple[str | None, str | None]:
        language = step.task.config.get("language") or {}
        if not isinstance(language, dict):
            raise _fail(step.index, step.task, "'language' must be an object like {\"sourceLanguage\": \"en\"}.",
                        field_="language")
        source, target = language.get("sourceLanguage"), language.get("targetLanguage")
        for name, value in (("sourceLanguage", source), ("targetLanguage", target)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise _fail(step.index, step.task, f"'{name}' must be a language code such as 'en'.",
                            field_=f"language.{name}")
        source = source.strip().lower() if isinstance(source, str) else None
        target = target.strip().lower() if isinstance(target, str) else None
        if source and current and source != current and step.task.type != "asr":
            raise _fail(step.index, step.task, f"its sourceLanguage is '{source}', but the text it gets from the "
                                               f"task before is in '{current}'.", field_="language.sourceLanguage")
        return source or current, target

    def _model(self, step: Step, task: str, default: str) -> str:
        """The serviceId (a model id or alias) if given, checked to do `task`, else `default`."""
        service_id = step.task.config.get("serviceId")
        if service_id is None:
            name = default
        else:
            if not isinstance(service_id, str) or not service_id:
                raise _fail(step.index, step.task, "'serviceId' must be a model id.", field_="serviceId")
            spec = self._spec(service_id)
            if spec is None:
                raise _fail(step.index, step.task, f"no model or route named '{service_id}' (see GET /v1/models).",
                            field_="serviceId", code="model_not_found")
            if task not in spec.tasks:
                raise _fail(step.index, step.task, f"the model '{service_id}' does {'/'.join(spec.tasks)}, "
                                                   f"not {task}.", field_="serviceId")
            name = service_id
        self.check_model(name)
        return name

    def _spec(self, name: str) -> ModelSpec | None:
        """The model behind a name; for a route, its first target (for checks such as language pairs)."""
        route = self.router.routes.get(name)
        if route is not None:
            return self.manager.catalog.get(route.targets[0].model)
        try:
            return self.manager.resolve(name)
        except KasetError:
            return None

    async def _plan_asr(self, step: Step, current: str | None) -> None:
        source, _target = self._languages(step, None)
        if source == "auto":
            source = None
        try:
            default = self.speech.transcriber_for(source)
        except KasetError as exc:
            raise _fail(step.index, step.task, exc.message, field_="language.sourceLanguage",
                        code=exc.code or "invalid_pipeline") from None
        step.model = self._model(step, "transcribe", default)
        step.source = step.target = source

    async def _plan_translation(self, step: Step, current: str | None) -> None:
        source, target = self._languages(step, current)
        if not source or not target:
            raise _fail(step.index, step.task, "give language.sourceLanguage and language.targetLanguage "
                                               "(e.g. {\"sourceLanguage\": \"en\", \"targetLanguage\": \"es\"}).",
                        field_="language")
        try:
            default = self.router.default_model("translate").id
        except KasetError as exc:
            raise _fail(step.index, step.task, exc.message) from None
        step.model = self._model(step, "translate", default)
        spec = self._spec(step.model)
        if spec is not None:
            pairs = (await (await self.router.handle(spec.id, "translate")).info()).pairs
            if (source, target) not in pairs:
                offered = ", ".join(f"{s}→{t}" for s, t in pairs) or "none"
                raise _fail(step.index, step.task, f"'{spec.id}' cannot translate {source}→{target}; "
                                                   f"its pairs: {offered}.", field_="language",
                            code="unsupported_language_pair")
        step.source, step.target = source, target

    async def _plan_tts(self, step: Step, current: str | None) -> None:
        language, _target = self._languages(step, current)
        if not language:
            raise _fail(step.index, step.task, "give language.sourceLanguage: the language of the text to speak "
                                               "(the task before does not fix it).", field_="language")
        voice = step.task.config.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise _fail(step.index, step.task, "'voice' must be a voice id.", field_="voice")
        fmt = str(step.task.config.get("audioFormat") or "wav").lower()
        if fmt not in AUDIO_FORMATS:
            raise _fail(step.index, step.task, f"audioFormat '{fmt}' is not offered; use one of "
                                               f"{', '.join(AUDIO_FORMATS)}.", field_="audioFormat")
        if step.task.config.get("serviceId") is None:
            spec = await self._voice_model(language)
            if spec is None:
                raise _fail(step.index, step.task, f"no voice for '{language}' is installed on this server, so "
                                                   "this text cannot be spoken. "
                            + ("An operator can add a Thai voice (the AI4Thai VAJA provider, see docs/providers.md)."
                               if language == "th" else "Leave out the tts task to get text."),
                            field_="language.sourceLanguage", code="no_voice")
            step.model = self._model(step, "synthesize", spec.id)
        else:
            step.model = self._model(step, "synthesize", "")
        if voice is not None:
            spec = self._spec(step.model)
            if spec is not None:
                voices = [v.id for v in await self.manager.voices(spec)]
                if voice not in voices:
                    raise _fail(step.index, step.task, f"'{spec.id}' has no voice '{voice}'; its voices: "
                                                       f"{', '.join(voices[:20])}{' …' if len(voices) > 20 else ''}.",
                                field_="voice")
        step.voice, step.audio_format = voice, fmt
        step.source = step.target = language

    async def _voice_model(self, language: str) -> ModelSpec | None:
        spec = self.speech.voice_model_for(language)
        if spec is None:
            # A multilingual synthesizer (eSpeak NG) is known to speak a language once its voices
            # were listed (the app does it at start-up, in the background): list them, ask again.
            await self.speech.list_voices()
            spec = self.speech.voice_model_for(language)
        return spec

    async def _plan_llm(self, step: Step, current: str | None) -> None:
        language, _target = self._languages(step, current)
        try:
            default = self.router.default_model("chat").id
        except KasetError as exc:
            raise _fail(step.index, step.task, exc.message) from None
        if default == "echo":  # the test model that repeats its input: a real LLM when one is installed
            default = next((s.id for s in self.router.models_for("chat") if s.id != "echo"), default)
        step.model = self._model(step, "chat", default)
        spec = self._spec(step.model)
        if spec is not None and language and "multilingual" not in spec.languages and spec.languages \
                and language not in spec.languages:
            raise _fail(step.index, step.task, f"the model '{spec.id}' writes {', '.join(spec.languages)} only, and "
                                               f"the text is in '{language}'. Translate it first (a translation "
                                               "task before this one).", field_="language")
        step.source = step.target = language

    async def _plan_advice(self, step: Step, current: str | None) -> None:
        language, _target = self._languages(step, current)
        if language is not None and language not in SUPPORTED_LANGUAGES:
            raise _fail(step.index, step.task, f"advice is in Thai or English; the text is in '{language}'. "
                                               "Translate it to English first.", field_="language")
        crop = step.task.config.get("crop")
        if crop is not None and not isinstance(crop, str):
            raise _fail(step.index, step.task, "'crop' must be a crop name.", field_="crop")
        self.check_model(self.advisor.embed_model)
        step.source = language
        step.target = language  # None (not known yet): the advisor detects it from the text

    async def _plan_diagnose(self, step: Step, current: str | None) -> None:
        language, _target = self._languages(step, None)
        if language is not None and language not in SUPPORTED_LANGUAGES:
            raise _fail(step.index, step.task, "a diagnosis is written in Thai or English ('th' or 'en').",
                        field_="language.sourceLanguage")
        crop = step.task.config.get("crop")
        if crop is not None and crop not in self.diagnoser.config.crops:
            raise _fail(step.index, step.task, f"unknown crop '{crop}'; known crops: "
                                               f"{', '.join(self.diagnoser.config.crops)}.", field_="crop")
        step.source = None
        step.target = language or "en"

    async def _plan_describe(self, step: Step, current: str | None) -> None:
        self.check_model(self.describer.classifier)
        step.source = None
        step.target = "en"  # offline, descriptions are English (see kaset.pipelines.describe)

    # --- running it ----------------------------------------------------------------------------

    async def run(self, tasks: list[Task], inputs: Inputs) -> tuple[list[StepResult], float]:
        steps = await self.plan(tasks, inputs)
        first = TASK_IO[tasks[0].type][0]
        items = ([Item(text=t, position=n) for n, t in enumerate(inputs.texts)] if first == "text" else
                 [Item(audio=a, position=n) for n, a in enumerate(inputs.audio)] if first == "audio" else
                 [Item(image=i, position=n) for n, i in enumerate(inputs.images)])
        started = time.perf_counter()
        results: list[StepResult] = []
        for step in steps:
            t0 = time.perf_counter()
            outputs: list[dict[str, Any]] = []
            audio: list[dict[str, Any]] = []
            config = dict(step.task.config)
            for item in items:
                produced = await getattr(self, f"_run_{step.task.type}")(step, item, config)
                if step.task.type == "tts":
                    audio.append(produced)
                else:
                    outputs.append(produced)
            if step.model:
                config["serviceId"] = step.model
            results.append(StepResult(task_type=step.task.type, config=config,
                                      output=None if step.task.type == "tts" else outputs,
                                      audio=audio if step.task.type == "tts" else None,
                                      ms=round((time.perf_counter() - t0) * 1000, 1)))
        return results, round((time.perf_counter() - started) * 1000, 1)

    def _text_in(self, step: Step, item: Item) -> str:
        text = (item.text or "").strip()
        if not text:
            raise _fail(step.index, step.task, "the text it got is empty (an empty input, or the task before "
                                               "produced nothing).", code="empty_text")
        limit = self.limits.max_speech_chars if step.task.type == "tts" else self.limits.max_text_chars
        if len(text) > limit:
            raise PayloadTooLarge(f"{_where(step.index, step.task)}: the text has {len(text)} characters; the "
                                  f"limit is {limit}.", param=f"pipelineTasks[{step.index}]")
        return text

    async def _run_asr(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        heard = await self.speech.hear(item.audio or b"", language=step.source, model=step.model,
                                       param=f"inputData.audio[{item.position}].audioContent")
        usage.record(audio_seconds=heard.seconds, model=heard.model)
        step.model = heard.model
        config["language"] = {**(config.get("language") or {}), "sourceLanguage": heard.language}
        item.text, item.audio, item.language = heard.text, None, heard.language
        return {"source": heard.text}

    async def _run_translation(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        text = self._text_in(step, item)
        if item.language and step.source and item.language != step.source:
            raise _fail(step.index, step.task, f"its sourceLanguage is '{step.source}', but the speech was "
                                               f"recognised as '{item.language}'.", field_="language")
        source, target = cast(str, step.source), cast(str, step.target)

        async def translate(model: ModelHandle) -> list[str]:
            return await model.translate([text], source, target)

        (translated,), spec = await self.router.call(step.model or "", "translate", translate, retry=True)
        step.model = spec.id
        usage.record(characters=len(text))
        item.text, item.language = translated, target
        return {"source": text, "target": translated}

    async def _run_tts(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        text = self._text_in(step, item)
        language = cast(str, step.source)
        speed = config.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.25 <= float(speed) <= 4.0:
            raise _fail(step.index, step.task, "'speed' must be a number from 0.25 to 4.0.", field_="speed")
        spoken = await self.speech.speak(text, language=language, model=step.model, voice=step.voice,
                                         speed=float(speed), fmt=step.audio_format)
        usage.record(characters=len(text), model=spoken.model)
        config.update(audioFormat=spoken.format, encoding="base64", samplingRate=spoken.sample_rate,
                      voice=spoken.voice, language={**(config.get("language") or {}), "sourceLanguage": language})
        item.audio, item.text = spoken.audio, None
        return {"audioContent": base64.b64encode(spoken.audio).decode("ascii"), "audioUri": None,
                "seconds": round(spoken.seconds, 3)}

    async def _run_llm(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        text = self._text_in(step, item)
        system = config.get("systemPrompt") or LLM_SYSTEM
        max_tokens = config.get("maxTokens", LLM_MAX_TOKENS)
        if not isinstance(system, str) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 2048:
            raise _fail(step.index, step.task, "'systemPrompt' must be text and 'maxTokens' a number from 1 to 2048.")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        params = GenerationParams(max_tokens=max_tokens, temperature=float(config.get("temperature", 0.7)))

        generation, spec = await self.router.call(step.model or "", "chat", lambda model: model.chat(messages, params))
        step.model = spec.id
        usage.record(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens)
        item.text = generation.text.strip()
        return {"source": text, "target": item.text}

    async def _run_advice(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        text = self._text_in(step, item)
        language = item.language if item.language in SUPPORTED_LANGUAGES else step.source
        if language is not None and language not in SUPPORTED_LANGUAGES:
            raise _fail(step.index, step.task, f"advice is in Thai or English; the text is in '{language}'.")
        advice = await self.advisor.advise(AdviceQuery(question=text, language=cast(Language | None, language),
                                                       crop=config.get("crop")))
        # The model that wrote the answer; for a curated answer, the embedder that found it.
        step.model = advice.llm_model if advice.path == "llm" and advice.llm_model else self.advisor.embed_model
        item.text, item.language = advice.answer, advice.language
        return {"source": text, "target": advice.answer, "path": advice.path,
                "citations": [h.entry.id for h in advice.hits]}

    async def _image(self, step: Step, item: Item) -> Any:
        data = item.image or b""
        if len(data) > self.limits.max_upload_bytes:
            raise PayloadTooLarge(f"The photo is larger than this server's limit of {self.limits.max_upload_bytes} "
                                  "bytes.", param="inputData.image")
        usage.record(images=1)
        return await asyncio.to_thread(decode_image, data, max_pixels=self.limits.max_image_pixels)

    async def _run_diagnose(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        image = await self._image(step, item)
        language = cast(Language, step.target or "en")
        diagnosis = await self.diagnoser.diagnose(image, crop=config.get("crop"), language=language)
        text = diagnosis.message
        if diagnosis.plan_text:
            text = f"{diagnosis.message}\n{diagnosis.plan_text}"
        elif diagnosis.retake_tips:
            text = " ".join([diagnosis.message, *diagnosis.retake_tips])
        models = [m.model for m in diagnosis.per_model] or ([diagnosis.gate.model] if diagnosis.gate else [])
        step.model = ",".join(dict.fromkeys(models)) or None
        item.text, item.image, item.language = text, None, diagnosis.language
        return {"source": None, "target": text, "status": diagnosis.status, "label": diagnosis.label,
                "confidence": None if diagnosis.confidence is None else round(diagnosis.confidence, 4)}

    async def _run_describe(self, step: Step, item: Item, config: dict[str, Any]) -> dict[str, Any]:
        image = await self._image(step, item)
        prompt = config.get("prompt")
        description = await self.describer.describe(image, language="en",
                                                    prompt=prompt if isinstance(prompt, str) else None)
        usage.record(prompt_tokens=description.prompt_tokens, completion_tokens=description.completion_tokens)
        step.model = ",".join(description.models_used) or None
        item.text, item.image, item.language = description.text, None, description.language
        return {"source": None, "target": description.text, "method": description.method}
