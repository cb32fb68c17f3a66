"""Everything the deployment files name exists in the code.

Every `KASET_*` variable in deploy/compose.yaml, deploy/secrets.env.example, deploy/k8s/, the
Dockerfile and docs/deploy.md is a field of `kaset.config.Settings` (or one of the few variables
the code reads directly, listed in ENV_EXCEPTIONS and checked to be read there); every `kaset`
command line is accepted by the real typer app (options and all); every probe and scrape path is
a route of the app that command runs (the gateway or the worker); every port agrees with the
command's `--port`; Grafana's provisioning points at the real dashboard and Prometheus at real
services. There is no Docker engine or cluster on these machines: nothing is started, only parsed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from typer.testing import CliRunner

from kaset.cli import app as cli_app
from kaset.config import Settings
from tests.deploy.conftest import (
    DASHBOARD,
    DEPLOY,
    DOCKERFILE,
    K8S,
    ROOT,
    Instruction,
    exec_form,
    is_kaset_image,
    k8s_documents,
    pod_spec,
)

SRC = ROOT / "src" / "kaset"

# Variables the code reads with os.environ rather than through Settings: name -> the file reading it.
ENV_EXCEPTIONS = {
    "KASET_BOOTSTRAP_KEY": SRC / "app.py",
    "KASET_EXPORT_PIP_ARGS": SRC / "registry" / "export.py",
    "KASET_CROP_GUARDIAN_CONFIG": SRC / "pipelines" / "diagnose.py",
}
# Non-KASET variables the deployment sets on Kaset containers, and where the code reads them.
PLAIN_ENV = {"MAX_CONCURRENT_INFERENCES": SRC / "workers" / "app.py"}
# The worker settings the deployment must use (docs/workers.md).
WORKER_SETTINGS = {"KASET_WORKER_URLS", "KASET_WORKER_REGISTRY", "KASET_WORKER_TOKEN", "KASET_WORKER_ADVERTISE_URL"}

DEPLOY_TEXT_FILES = [DEPLOY / "compose.yaml", DEPLOY / "secrets.env.example", DOCKERFILE,
                     DEPLOY / "prometheus" / "prometheus.yml", *sorted(K8S.glob("*.yaml"))]
DOCS_FILE = ROOT / "docs" / "deploy.md"

ENV_NAME = re.compile(r"(?<![A-Z0-9_])KASET_[A-Z0-9_]*[A-Z0-9]")


def setting_env_names() -> set[str]:
    return {"KASET_" + name.upper() for name in Settings.model_fields}


# --- environment variables ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [*DEPLOY_TEXT_FILES, DOCS_FILE], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kaset_env_var_is_a_setting(path: Path) -> None:
    names = set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    names -= {n for n in names if n.startswith("KASET_TEST_")}  # the test suite's own variables
    unknown = names - setting_env_names() - set(ENV_EXCEPTIONS)
    assert not unknown, f"{path.name} names variables Kaset does not read: {sorted(unknown)}"


def test_env_exceptions_are_really_read_by_the_code() -> None:
    for name, source in {**ENV_EXCEPTIONS, **PLAIN_ENV}.items():
        assert name in source.read_text(encoding="utf-8"), f"{source} no longer reads {name}"
        assert name not in setting_env_names() or name in PLAIN_ENV


def test_deployment_uses_the_worker_settings_by_their_real_names() -> None:
    missing = WORKER_SETTINGS - setting_env_names()
    assert not missing, f"kaset.config.Settings has no {sorted(missing)}"
    text = "\n".join(p.read_text(encoding="utf-8") for p in DEPLOY_TEXT_FILES)
    for name in [*WORKER_SETTINGS, *PLAIN_ENV]:
        assert name in text, f"no deployment file sets {name}"


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    files = service.get("env_file", [])
    for entry in [files] if isinstance(files, str) else files:
        path = DEPLOY / (entry if isinstance(entry, str) else entry["path"])
        path = path if path.exists() else path.with_name(path.name + ".example")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env.update({k: str(v) for k, v in raw.items()})
    return env


def _k8s_env(doc: dict[str, Any], container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if ref in source:
                obj = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == source[ref]["name"])
                env.update(obj.get("data", {}) | obj.get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"])
            env[item["name"]] = secret["stringData"][ref["key"]]
        else:
            env[item["name"]] = "10.0.0.1"  # a downward-API value (the pod IP)
    return env


def _containers_env(compose: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    out = [(f"compose:{name}", _compose_env(s)) for name, s in compose["services"].items()
           if is_kaset_image(s.get("image"))]
    docs = [d for _, d in k8s_documents()]
    for doc in docs:
        spec = pod_spec(doc)
        for container in spec["containers"] if spec else []:
            out.append((f"k8s:{doc['metadata']['name']}", _k8s_env(doc, container, docs)))
    return out


def test_every_container_environment_parses_as_settings(compose: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The values, not only the names: each container's environment builds a valid Settings."""
    import os

    for where, env in _containers_env(compose):
        for key in list(os.environ):
            if key.startswith("KASET_") or key in PLAIN_ENV:
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, re.sub(r"\$\((\w+)\)", "10.0.0.1", value))
        settings = Settings()
        if settings.worker_registry == "redis":
            assert settings.redis_url, f"{where}: KASET_WORKER_REGISTRY=redis without KASET_REDIS_URL"
        if "MAX_CONCURRENT_INFERENCES" in env:
            from kaset.workers.app import max_concurrent_override

            assert max_concurrent_override() == int(env["MAX_CONCURRENT_INFERENCES"]), where


# --- commands ----------------------------------------------------------------------------------


def _resolve(argv: list[str], parse: bool = True) -> tuple[list[str], Any, dict[str, Any]]:
    """The subcommand path of argv in the real CLI, the command, and its parsed parameters."""
    # Typer may ship its own copy of click: groups are told apart by their `commands`.
    command: Any = typer.main.get_command(cli_app)
    path: list[str] = []
    rest = list(argv)
    assert hasattr(command, "commands")
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    assert not hasattr(command, "commands"), f"kaset {' '.join(argv)}: {' '.join(path)} needs a subcommand"
    if not parse:
        return path, command, {}
    ctx = command.make_context(" ".join(["kaset", *path]), rest)
    return path, command, dict(ctx.params)


def _kaset_commands(compose: dict[str, Any], dockerfile: list[Instruction]) -> list[tuple[str, list[str], bool]]:
    """(where, argv, whole): whole command lines are parsed with their options; the docs' mentions
    (`kaset worker` in a sentence) only need their command to exist."""
    out = [(f"compose:{name}", [str(a) for a in s["command"]], True) for name, s in compose["services"].items()
           if is_kaset_image(s.get("image"))]
    for _, doc in k8s_documents():
        spec = pod_spec(doc)
        for container in spec["containers"] if spec else []:
            if is_kaset_image(container["image"]):
                out.append((f"k8s:{doc['metadata']['name']}", [str(a) for a in container["args"]], True))
    out.append(("Dockerfile CMD", exec_form([i for i in dockerfile if i.keyword == "CMD"][-1].value), True))
    for instruction in dockerfile:
        if instruction.keyword == "RUN":
            for match in re.finditer(r"\bkaset ([a-z][\w-]*(?: [\w.,=-]+)*)", instruction.value):
                out.append(("Dockerfile RUN", match.group(1).split(), True))
    for match in re.finditer(r"`kaset ([^`|]+)`", DOCS_FILE.read_text(encoding="utf-8")):
        out.append(("docs/deploy.md", match.group(1).split(), False))
    return out


def test_every_kaset_command_exists(compose: dict[str, Any], dockerfile: list[Instruction]) -> None:
    runner = CliRunner()
    commands = _kaset_commands(compose, dockerfile)
    used = set()
    for where, argv, whole in commands:
        path, _, _ = _resolve(argv, parse=whole)
        result = runner.invoke(cli_app, [*path, "--help"])
        assert result.exit_code == 0, f"{where}: kaset {' '.join(path)} --help failed: {result.output}"
        used.add(" ".join(path))
    assert {"serve", "worker", "jobs-worker", "db upgrade", "models install"} <= used


def test_resolver_refuses_unknown_commands_and_options() -> None:
    for argv in (["db"], ["no-such-command"]):
        with pytest.raises(AssertionError):
            _resolve(argv)
    for argv in (["serve", "--prot", "8000"], ["worker", "--models", "echo", "--port", "eighty"], ["worker"]):
        with pytest.raises(Exception) as caught:
            _resolve(argv)
        assert "UsageError" in [c.__name__ for c in type(caught.value).__mro__], argv


def _listen_port(argv: list[str]) -> tuple[str, int | None]:
    path, _, params = _resolve(argv)
    role = " ".join(path)
    if role == "serve":
        return role, params["port"] or Settings.model_fields["port"].default
    if role == "worker":
        return role, params["port"]
    return role, None


# --- apps, routes and probes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    from kaset.app import create_app
    from kaset.workers.app import create_worker_app

    data = tmp_path_factory.mktemp("deploy-apps")
    gateway = create_app(Settings(data_dir=data, models=[]), announce_key=lambda key: None)
    worker = create_worker_app(Settings(data_dir=data), ["echo"])
    return {"serve": route_paths(gateway.routes), "worker": route_paths(worker.routes)}


def route_paths(routes: list[Any], prefix: str = "") -> set[str]:
    """Every path template an app answers, through included routers (FastAPI may keep them as
    lazy `_IncludedRouter` objects holding the original router and the include prefix)."""
    paths: set[str] = set()
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            paths |= route_paths(original.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif getattr(route, "path", None):
            paths.add(prefix + route.path)
    return paths


def _url(text: str) -> tuple[int, str]:
    match = re.search(r"https?://[\w.-]+:(\d+)(/[\w/.-]*)?", text)
    assert match, text
    return int(match.group(1)), match.group(2) or "/"


def test_compose_probes_and_ports_match_each_command(compose: dict[str, Any], routes: dict[str, set[str]]) -> None:
    for name, service in compose["services"].items():
        if not is_kaset_image(service.get("image")):
            continue
        role, port = _listen_port([str(a) for a in service["command"]])
        if port is None:
            assert not service.get("ports") and not service.get("expose"), name
            continue
        check_port, check_path = _url(" ".join(service["healthcheck"]["test"]))
        assert check_port == port, f"{name}: healthcheck on {check_port}, listens on {port}"
        assert check_path in routes[role], f"{name}: {check_path} is not a route of kaset {role}"
        for published in service.get("ports", []):
            assert int(str(published).rsplit(":", 1)[-1]) == port, name
        for exposed in service.get("expose", []):
            assert int(exposed) == port, name


def test_k8s_probes_and_ports_match_each_command(routes: dict[str, set[str]]) -> None:
    for _, doc in k8s_documents():
        spec = pod_spec(doc)
        for container in spec["containers"] if spec else []:
            role, port = _listen_port([str(a) for a in container["args"]])
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            if port is None:
                assert not ports, doc["metadata"]["name"]
                continue
            assert set(ports.values()) == {port}, f"{doc['metadata']['name']}: containerPort vs --port {port}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                http = container.get(probe, {}).get("httpGet")
                if http:
                    assert http["path"] in routes[role], f"{doc['metadata']['name']} {probe}: {http['path']}"
                    assert ports.get(http["port"], http["port"]) == port
            annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
            if "prometheus.io/port" in annotations:
                assert int(annotations["prometheus.io/port"]) == port
                assert annotations["prometheus.io/path"] in routes[role]
            advertise = _k8s_env(doc, container, [d for _, d in k8s_documents()]).get("KASET_WORKER_ADVERTISE_URL")
            if advertise:
                assert _url(re.sub(r"\$\((\w+)\)", "10.0.0.1", advertise))[0] == port


def test_dockerfile_healthcheck_is_a_gateway_route(dockerfile: list[Instruction],
                                                   routes: dict[str, set[str]]) -> None:
    role, port = _listen_port(exec_form([i for i in dockerfile if i.keyword == "CMD"][-1].value))
    check_port, path = _url(next(i for i in dockerfile if i.keyword == "HEALTHCHECK").value)
    assert (role, check_port) == ("serve", port)
    assert path in routes["serve"]


def test_worker_routes_the_issue_names(routes: dict[str, set[str]]) -> None:
    assert {"/health/live", "/health/ready", "/warmup", "/metrics"} <= routes["worker"]
    assert {"/health/live", "/health/ready", "/metrics"} <= routes["serve"]


def test_gateway_worker_urls_name_compose_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = _compose_env(services["gateway"])
    urls = [u for u in env.get("KASET_WORKER_URLS", "").split(",") if u]
    assert urls or env.get("KASET_WORKER_REGISTRY") == "redis"
    workers = {n for n, s in services.items() if is_kaset_image(s.get("image")) and s["command"][0] == "worker"}
    named = set()
    for url in urls:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        assert host in workers, url
        assert _listen_port([str(a) for a in services[host]["command"]]) == ("worker", port), url
        named.add(host)
    if urls:
        assert named == workers, f"workers the gateway does not know: {workers - named}"


# --- Prometheus and Grafana --------------------------------------------------------------------


def test_prometheus_scrapes_every_kaset_server(compose: dict[str, Any], routes: dict[str, set[str]]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    scraped = set()
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host, _, port = target.rpartition(":")
                if host == "localhost":
                    continue
                assert host in services, f"{job['job_name']}: {host} is not a compose service"
                service = services[host]
                if is_kaset_image(service.get("image")):
                    role, listen = _listen_port([str(a) for a in service["command"]])
                    assert listen == int(port), target
                    assert path in routes[role], f"{path} is not a route of kaset {role}"
                    scraped.add(host)
    servers = {n for n, s in services.items()
               if is_kaset_image(s.get("image")) and _listen_port([str(a) for a in s["command"]])[1] is not None}
    assert scraped == servers, f"not scraped: {servers - scraped}"
    prometheus = services["prometheus"]
    mounts = [str(v) for v in prometheus["volumes"]]
    assert any(m.startswith("./prometheus/prometheus.yml:") for m in mounts)


def test_grafana_provisions_the_real_dashboard(compose: dict[str, Any]) -> None:
    import json

    grafana = compose["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        parts = str(volume).split(":")
        if parts[0].startswith("."):
            mounts[parts[1]] = (DEPLOY / parts[0]).resolve()
    # Data source: the compose Prometheus, of the type the dashboard's variable asks for.
    datasource_dir = mounts["/etc/grafana/provisioning/datasources"]
    sources = [s for f in sorted(datasource_dir.glob("*.yaml"))
               for s in yaml.safe_load(f.read_text(encoding="utf-8"))["datasources"]]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    wanted = {v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "datasource"}
    assert any(s["type"] in wanted for s in sources), (wanted, sources)
    for source in sources:
        url = urlsplit(source["url"])
        assert url.hostname in compose["services"], source["url"]
        assert url.port == 9090
    # Dashboards: each provider path holds a mount of deploy/grafana/kaset-dashboard.json.
    dashboard_dir = mounts["/etc/grafana/provisioning/dashboards"]
    providers = [p for f in sorted(dashboard_dir.glob("*.yaml"))
                 for p in yaml.safe_load(f.read_text(encoding="utf-8"))["providers"]]
    assert providers
    for provider in providers:
        folder = provider["options"]["path"].rstrip("/")
        files = [host for target, host in mounts.items() if target.startswith(folder + "/")]
        assert DASHBOARD.resolve() in files, f"{folder} gets {files}"
    assert dashboard["uid"] and dashboard["panels"]
