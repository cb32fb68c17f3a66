"""The tasks a model can serve: what a catalog entry declares and what a runtime implements.

Below both kaset.registry.catalog and kaset.runtimes so either can name a task without the other
(kaset.runtimes.base re-exports them, with the contract each task's runtime implements).
"""

from __future__ import annotations

from typing import Literal

Task = Literal["transcribe", "synthesize", "translate", "chat", "embed", "classify"]
ALL_TASKS: tuple[Task, ...] = ("transcribe", "synthesize", "translate", "chat", "embed", "classify")
