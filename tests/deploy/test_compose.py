"""deploy/compose.yaml, parsed with PyYAML and checked for structure.

No Docker engine exists on these machines, so `docker compose config` / `up` are not run here:
these checks stand in for the ones compose itself would make (and a few it would not).
"""

from __future__ import annotations

from typing import Any

from tests.deploy.conftest import DEPLOY, is_kaset_image

KNOWN_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict) and services
    return services


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def test_the_issue_services_are_there(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in ("gateway", "postgres", "redis", "rabbitmq", "jobs-worker", "migrate", "prometheus", "grafana"):
        assert name in services, name
    workers = [n for n, s in services.items()
               if is_kaset_image(s.get("image")) and s.get("command", [""])[0] == "worker"]
    assert len(workers) >= 2, workers


def test_every_depends_on_names_a_service(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, service in services.items():
        for dep, spec in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            assert spec.get("condition", "service_started") in KNOWN_CONDITIONS, (name, dep)
            if spec.get("condition") == "service_healthy":
                assert not services[dep].get("healthcheck", {}).get("disable"), f"{dep} has no healthcheck"


def test_no_dependency_cycle(compose: dict[str, Any]) -> None:
    services = _services(compose)
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        assert state.get(name) != "visiting", f"cycle: {' -> '.join([*path, name])}"
        if state.get(name) == "done":
            return
        state[name] = "visiting"
        for dep in _depends_on(services[name]):
            visit(dep, [*path, name])
        state[name] = "done"

    for name in services:
        visit(name, [])


def test_gateway_waits_for_the_migration(compose: dict[str, Any]) -> None:
    services = _services(compose)
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert services["gateway"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["jobs-worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate.get("restart") == "no"


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    """Long-running services have a real check; only one-shot services may disable it."""
    services = _services(compose)
    one_shot = {dep for s in services.values() for dep, spec in _depends_on(s).items()
                if spec.get("condition") == "service_completed_successfully"}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check is not None, f"{name} has no healthcheck"
        if check.get("disable"):
            assert name in one_shot, f"{name} disables its healthcheck but is not a one-shot service"
            continue
        test = check["test"]
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name


def test_published_ports_are_unique(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            text = str(port)
            host = text.rsplit(":", 1)[0] if ":" in text else text
            assert host not in seen, f"host port {host} published by {seen.get(host)} and {name}"
            seen[host] = name
    assert "8000" in seen and seen["8000"] == "gateway"


def test_volumes_are_declared_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    used = set()
    for name, service in _services(compose).items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_env_files_exist_or_have_an_example(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        files = service.get("env_file", [])
        for entry in [files] if isinstance(files, str) else files:
            path = DEPLOY / (entry if isinstance(entry, str) else entry["path"])
            assert path.exists() or path.with_name(path.name + ".example").exists(), f"{name}: {path}"


def test_kaset_services_are_built_from_the_repo_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        if is_kaset_image(service.get("image")):
            build = service["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file(), name
            assert isinstance(service["command"], list), name


def test_secrets_are_not_inline(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        env = service.get("environment", {})
        for key in ("KASET_JWT_SECRET", "KASET_WORKER_TOKEN", "GF_SECURITY_ADMIN_PASSWORD"):
            assert key not in env, f"{name} sets {key} inline; it belongs in secrets.env"
    gateway = _services(compose)["gateway"]
    assert "secrets.env" in gateway["env_file"]
    example = (DEPLOY / "secrets.env.example").read_text(encoding="utf-8")
    assert "KASET_JWT_SECRET=" in example and "KASET_WORKER_TOKEN=" in example
