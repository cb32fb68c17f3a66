"""What every `kaset` command uses: the consoles, the --config option, the settings and the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kaset.config import Settings, load_settings
from kaset.registry.catalog import Catalog

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.", exists=True)]


def cli_settings(config: Path | None = None, **overrides: object) -> Settings:
    return load_settings(config, **overrides)


def cli_catalog(settings: Settings) -> Catalog:
    return Catalog.load(settings.catalog_dirs)
