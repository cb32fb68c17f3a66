"""Kubernetes manifests (deploy/k8s): schema-valid, and wired together.

Validated with the `kubernetes-validate` package against the schemas it ships for
KUBERNETES_VERSION (strict: unknown fields are errors). No cluster exists on these machines:
nothing is applied; `kubectl apply -k deploy/k8s` is documented in docs/deploy.md.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import K8S, is_kaset_image, k8s_documents, k8s_files, pod_spec

KUBERNETES_VERSION = "1.31.0"


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


DOCS = k8s_documents()


def test_kubernetes_version_has_schemas() -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("item", DOCS, ids=[_id(d) for d in DOCS])
def test_manifest_is_valid(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validator_is_not_vacuous() -> None:
    """A broken copy of the gateway Deployment is refused, so the test above means something."""
    gateway = next(doc for _, doc in DOCS if doc["kind"] == "Deployment" and "gateway" in doc["metadata"]["name"])
    broken = copy.deepcopy(gateway)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = copy.deepcopy(gateway)
    unknown["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())


def test_expected_objects_present() -> None:
    kinds = [(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS]
    for kind in ("Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job", "HorizontalPodAutoscaler"):
        assert any(k == kind for k, _ in kinds), kind
    deployments = {n for k, n in kinds if k == "Deployment"}
    assert {"kaset-gateway", "kaset-jobs-worker"} <= deployments
    assert len([n for n in deployments if n.startswith("kaset-worker-")]) >= 2
    namespaces = {doc["metadata"]["name"] for _, doc in DOCS if doc["kind"] == "Namespace"}
    for _, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") in namespaces, _id((_, doc))


def test_secret_values_are_placeholders() -> None:
    for path, doc in DOCS:
        if doc["kind"] == "Secret":
            assert "replace" in path.read_text(encoding="utf-8").lower()
            for key, value in doc.get("stringData", {}).items():
                assert "REPLACE_ME" in value, f"{key} in {path.name} looks like a real secret"


def _containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for _, doc in DOCS:
        spec = pod_spec(doc)
        if spec is not None:
            out.extend((doc, c) for c in spec["containers"])
    return out


def test_every_container_has_resources_and_runs_as_non_root() -> None:
    for doc, container in _containers():
        resources = container.get("resources", {})
        assert resources.get("requests") and resources.get("limits"), doc["metadata"]["name"]
        spec = pod_spec(doc)
        assert spec is not None
        security = spec.get("securityContext", {})
        assert security.get("runAsNonRoot") is True and security.get("runAsUser", 0) != 0
        assert is_kaset_image(container["image"]), container["image"]


def test_http_deployments_have_readiness_and_liveness_on_health_routes() -> None:
    seen = 0
    for doc, container in _containers():
        if doc["kind"] != "Deployment":
            continue
        if container.get("ports"):
            seen += 1
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        else:  # the jobs worker: no HTTP server, an exec liveness probe
            assert "exec" in container["livenessProbe"]
    assert seen >= 3


def _pod_labels() -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    return {doc["metadata"]["name"]: (doc["spec"]["template"]["metadata"]["labels"], doc)
            for _, doc in DOCS if doc["kind"] == "Deployment"}


def test_services_select_a_deployment_and_its_port() -> None:
    for _, svc in DOCS:
        if svc["kind"] != "Service":
            continue
        selector = svc["spec"]["selector"]
        matches = [doc for labels, doc in _pod_labels().values() if selector.items() <= labels.items()]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} Deployments"
        containers = matches[0]["spec"]["template"]["spec"]["containers"]
        ports = [p for c in containers for p in c.get("ports", [])]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (svc["metadata"]["name"], target)


def test_hpas_scale_worker_deployments_on_cpu() -> None:
    deployments = _pod_labels()
    hpas = [doc for _, doc in DOCS if doc["kind"] == "HorizontalPodAutoscaler"]
    assert hpas
    scaled = set()
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert target["name"].startswith("kaset-worker-")
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        # Utilization needs a CPU request on every container of the target.
        for container in deployments[target["name"]][1]["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["requests"]["cpu"]
        scaled.add(target["name"])
    assert scaled == {n for n in deployments if n.startswith("kaset-worker-")}


def test_referenced_configmaps_secrets_and_claims_exist() -> None:
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in DOCS if doc["kind"] == "ConfigMap"}
    secrets = {doc["metadata"]["name"]: doc.get("stringData", {}) | doc.get("data", {})
               for _, doc in DOCS if doc["kind"] == "Secret"}
    claims = {doc["metadata"]["name"] for _, doc in DOCS if doc["kind"] == "PersistentVolumeClaim"}
    for doc, container in _containers():
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], ref
        spec = pod_spec(doc)
        assert spec is not None
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
