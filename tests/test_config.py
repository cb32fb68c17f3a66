"""Settings are read once and frozen: a process that serves other values serves a copy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kaset.config import Settings


def test_settings_refuse_assignment() -> None:
    settings = Settings(port=9000)
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 9001
    with pytest.raises(ValidationError, match="frozen"):
        setattr(settings, "models", ["echo"])  # noqa: B010 (the way a dynamic caller would)
    assert settings.port == 9000 and settings.models is None


def test_a_copy_carries_the_changes_and_leaves_the_original() -> None:
    settings = Settings(models=["echo"], lazy_load=True)
    served = settings.model_copy(update={"models": [], "lazy_load": False})
    assert served.models == [] and served.lazy_load is False
    assert settings.models == ["echo"] and settings.lazy_load is True
    with pytest.raises(ValidationError, match="frozen"):
        served.lazy_load = True
