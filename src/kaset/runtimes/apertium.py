"""Rule-based translation with Apertium, through the `apertium` command of the OS.

Each call starts one `apertium -u PAIR` pipeline (a bash script around lt-proc,
apertium-tagger, apertium-transfer, ...) with the text on stdin; `-u` keeps unknown
words as they are instead of marking them with `*`. Starting the pipeline costs
0.1-0.25 s (measured: eng-spa 0.11 s, en-gl 0.22 s), mostly loading the transducers,
so a batch is sent in one call:

* Texts are stripped of outer whitespace (put back afterwards) and joined with a run of
  line breaks longer than any inside them, at least a blank line. Apertium's txt
  deformatter ends the sentence at a line break (it adds a `.` that the reformatter
  removes again) and turns the break into a superblank, and superblanks come out in
  order and unchanged, so the output splits back on the same run. Tests check that each
  text of a mixed batch translates exactly as it does alone. (One difference seen: a
  text that opens with a bracket, "[brackets] and ...", gets its first word capitalised
  when alone but not in a batch.)
* If the output ever fails to split into the right number of pieces, every text of the
  batch gets a call of its own.

Nothing is shared between calls, so the runtime is safe to call from several threads.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

from kaset.errors import InvalidRequest, KasetError, ModelUnavailable
from kaset.runtimes.base import Translator

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
LIST_TIMEOUT = 30.0

# Apertium names languages by ISO 639-3 (older pairs: 639-1). 639-3 -> 639-1 for the
# languages Apertium has pairs for; codes missing here are shown as Apertium spells them.
ISO3_TO_ISO1: dict[str, str] = {
    "afr": "af", "amh": "am", "ara": "ar", "arg": "an", "ast": "ast", "aze": "az", "bak": "ba",
    "bel": "be", "ben": "bn", "bos": "bs", "bre": "br", "bul": "bg", "cat": "ca", "ces": "cs",
    "chv": "cv", "cos": "co", "cym": "cy", "dan": "da", "deu": "de", "ell": "el", "eng": "en",
    "epo": "eo", "est": "et", "eus": "eu", "fao": "fo", "fas": "fa", "fin": "fi", "fra": "fr",
    "fry": "fy", "gla": "gd", "gle": "ga", "glg": "gl", "grn": "gn", "guj": "gu", "hat": "ht",
    "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ibo": "ig", "ind": "id",
    "isl": "is", "ita": "it", "jpn": "ja", "kat": "ka", "kaz": "kk", "kir": "ky", "kor": "ko",
    "kur": "ku", "lat": "la", "lav": "lv", "lit": "lt", "ltz": "lb", "mal": "ml", "mar": "mr",
    "mkd": "mk", "mlt": "mt", "mon": "mn", "msa": "ms", "nld": "nl", "nno": "nn", "nob": "nb",
    "nor": "no", "oci": "oc", "pan": "pa", "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru",
    "sah": "sah", "sme": "se", "slk": "sk", "slv": "sl", "som": "so", "spa": "es", "sqi": "sq",
    "srd": "sc", "hbs": "sh",
    "srp": "sr", "swa": "sw", "swe": "sv", "tam": "ta", "tat": "tt", "tel": "te", "tgk": "tg",
    "tgl": "tl", "tha": "th", "tur": "tr", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz",
    "vie": "vi", "yid": "yi", "zho": "zh",
}  # fmt: skip


@dataclass(frozen=True)
class _Lang:
    """A language as ISO 639-1 where one exists, plus an optional variant (`valencia`, `us`)."""

    code: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.code}-{self.variant}" if self.variant else self.code


class TranslationTimeout(KasetError):
    status_code = 504
    error_type = "server_error"
    code = "timeout"


class ApertiumRuntime(Translator):
    """params: command (default "apertium"), datadir (default: Apertium's own),
    timeout (seconds per call, default 60)."""

    def load(self) -> None:
        command = shutil.which(self.params.get("command", "apertium"))
        if command is None:
            raise ModelUnavailable(
                f"Model '{self.spec.id}' needs the 'apertium' command. Install it with: "
                "apt-get install apertium apertium-eng-spa"
            )
        self._command = command
        datadir = self.params.get("datadir")
        self._datadir_args = ["-d", str(datadir)] if datadir else []
        self._timeout = float(self.params.get("timeout", DEFAULT_TIMEOUT))
        listing = subprocess.run(
            [command, *self._datadir_args, "-l"], capture_output=True, text=True, timeout=LIST_TIMEOUT
        )
        # (source, target) -> mode name, first spelling wins ("en-gl" and "eng-glg" may coexist).
        self._modes: dict[tuple[_Lang, _Lang], str] = {}
        for line in listing.stdout.splitlines():
            mode = line.strip()
            parsed = _parse_mode(mode)
            if parsed is not None and parsed not in self._modes:
                self._modes[parsed] = mode
        if not self._modes:
            raise ModelUnavailable(
                f"Model '{self.spec.id}': Apertium has no language pairs installed "
                "(install one, e.g. apt-get install apertium-eng-spa)."
            )

    def warmup(self) -> None:
        # Pulls the first pair's transducers into the page cache.
        source, target = next(iter(self._modes))
        self.translate(["hello"], str(source), str(target))

    def pairs(self) -> list[tuple[str, str]]:
        """Base pairs, plus variants (e.g. `ca-valencia`) whose base pair is not installed."""
        base = {(s.code, t.code) for (s, t) in self._modes if not s.variant and not t.variant}
        extra = {
            (str(s), str(t)) for (s, t) in self._modes if (s.variant or t.variant) and (s.code, t.code) not in base
        }
        return sorted(base | extra)

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        mode = self._find_mode(source, target)
        results = list(texts)  # blank texts come back as they are
        todo: list[int] = []
        cores: list[str] = []
        for i, text in enumerate(texts):
            core = text.strip()
            if core:
                todo.append(i)
                cores.append(core)
        for i, core, out in zip(todo, cores, self._translate_cores(mode, cores), strict=True):
            text = texts[i]
            # Apertium keeps outer whitespace anyway; stripping it first keeps the separator
            # of a batch clear of it, so it is put back here.
            lead = text[: len(text) - len(text.lstrip())]
            trail = text[len(text.rstrip()) :]
            results[i] = lead + _tidy(core, out.strip()) + trail
        return results

    # --- helpers ---------------------------------------------------------------------------

    def _translate_cores(self, mode: str, cores: list[str]) -> list[str]:
        """Translate texts without outer whitespace, all in one call when possible."""
        if len(cores) <= 1:
            return [self._run(mode, core) for core in cores]
        # A run of line breaks longer than any inside the texts; at least a blank line,
        # which makes Apertium end the sentence there.
        longest = max((len(run) for core in cores for run in re.findall(r"\n+", core)), default=0)
        separator = "\n" * max(2, longest + 1)
        pieces = self._run(mode, separator.join(cores)).split(separator)
        if len(pieces) == len(cores):
            return pieces
        log.warning("apertium %s: a batch of %d came back in %d pieces", mode, len(cores), len(pieces))
        return [self._run(mode, core) for core in cores]

    def _find_mode(self, source: str, target: str) -> str:
        src, tgt = _parse_lang(source), _parse_lang(target)
        if src is None or tgt is None:
            raise self._unsupported(source, target)
        # An exact variant first, then the plain language (es-MX is served by eng-spa).
        for s in dict.fromkeys((src, _Lang(src.code))):
            for t in dict.fromkeys((tgt, _Lang(tgt.code))):
                mode = self._modes.get((s, t))
                if mode is not None:
                    return mode
        raise self._unsupported(source, target)

    def _unsupported(self, source: str, target: str) -> InvalidRequest:
        supported = ", ".join(f"{s}->{t}" for s, t in self.pairs())
        return InvalidRequest(
            f"Apertium cannot translate from '{source}' to '{target}'. Installed pairs: {supported}.",
            param="target",
            code="unsupported_language_pair",
        )

    def _run(self, mode: str, text: str) -> str:
        proc = subprocess.Popen(
            [self._command, *self._datadir_args, "-u", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own process group, so a timeout kills the whole pipeline, not just bash.
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(text.encode("utf-8"), timeout=self._timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TranslationTimeout(
                f"Apertium ({mode}) did not finish within {self._timeout:g} s; send less text per request."
            ) from None
        if proc.returncode != 0:
            message = err.decode("utf-8", "replace").strip()[-500:]
            raise KasetError(f"Apertium ({mode}) failed with exit code {proc.returncode}: {message}")
        return out.decode("utf-8", "replace")


def _parse_mode(mode: str) -> tuple[_Lang, _Lang] | None:
    """`eng-cat_valencia` -> (en, ca-valencia); None for modes that are not LANG-LANG."""
    parts = mode.split("-")
    if len(parts) != 2:
        return None
    source, target = _parse_lang(parts[0]), _parse_lang(parts[1])
    if source is None or target is None:
        return None
    return source, target


def _parse_lang(code: str) -> _Lang | None:
    """`en`, `eng`, `en-US`, `cat_valencia` -> a _Lang with the ISO 639-1 code where one exists."""
    match = re.fullmatch(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z0-9_-]+))?", code.strip())
    if match is None:
        return None
    lang = match.group(1).lower()
    variant = match.group(2).lower().replace("-", "_") if match.group(2) else None
    return _Lang(ISO3_TO_ISO1.get(lang, lang), variant)


def _tidy(source: str, output: str) -> str:
    """Undo doubled blanks: a dropped pronoun ("I have" -> "Tengo") leaves its blank behind."""
    if "  " in output and "  " not in source:
        output = re.sub(r"(?<=\S) {2,}(?=\S)", " ", output)
    return output
