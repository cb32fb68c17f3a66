"""Per-key model allowlists: which model names a key may call."""

from __future__ import annotations

from kaset.auth.principal import Principal
from kaset.errors import PermissionDenied
from kaset.registry.catalog import Catalog


def allows(allowed: frozenset[str], name: str, catalog: Catalog | None) -> bool:
    """Whether `name` (an id, alias or id@version) is covered by the allowlist.

    An entry names a model however a client may: its id covers every version and alias of it;
    an alias or id@version covers just that name (and what it resolves to).
    """
    if name in allowed or name.partition("@")[0] in allowed:
        return True
    spec = catalog.get(name) if catalog is not None else None
    if spec is None:
        return False
    return spec.id in allowed or spec.key in allowed or any(alias in allowed for alias in spec.aliases)


def ensure_allowed(principal: Principal | None, name: str, catalog: Catalog | None) -> None:
    """403 naming the model when the caller's key may not use it (no-op for unrestricted callers)."""
    if principal is None or principal.allowed_models is None:
        return
    if not allows(principal.allowed_models, name, catalog):
        raise PermissionDenied(
            f"This API key may not use the model '{name}'. It may use: "
            f"{', '.join(sorted(principal.allowed_models))}.", param="model", code="model_not_allowed")
