"""The files in deploy/ are checked here because the image is not built and no cluster runs in CI.

Manifests are validated against the Kubernetes API schemas, the Dockerfile is linted, and the
settings that must agree across files (ports, config path, grace period, user) are compared.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from flux import config as flux_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
EXAMPLE_CONFIG = DEPLOY / "config" / "flux.yaml"

# The oldest Kubernetes the manifests are written for (the preStop sleep action is on by
# default from 1.30) and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kv_utils.latest_version())
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _resource(kind: str, name: str) -> dict[str, Any]:
    found = [d for p in MANIFESTS for d in _documents(p) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in {K8S}, found {len(found)}"
    return found[0]


def _deployment() -> dict[str, Any]:
    return _resource("Deployment", "flux")


def _container() -> dict[str, Any]:
    containers = _deployment()["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["flux"]
    return dict(containers[0])


def _configmap_config() -> flux_config.FluxConfig:
    data = _resource("ConfigMap", "flux-config")["data"]
    return flux_config.parse(yaml.safe_load(data["flux.yaml"]), source="deploy/k8s/configmap.yaml: flux.yaml")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, split into build stages (each starts with FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in _instructions(DOCKERFILE):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


def _local_copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context in a stage."""
    copies = []
    for keyword, arguments in stage:
        words = shlex.split(arguments)
        if keyword == "COPY" and not any(w.startswith("--from") for w in words):
            paths = [w for w in words if not w.startswith("--")]
            copies.append((paths[:-1], paths[-1]))
    return copies


def _tool(name: str) -> str:
    """A command-line tool from the dev extra, found beside this interpreter first."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed; run `make install` (it comes with the dev extra)"
    return found


# --- Kubernetes manifests -------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    documents = _documents(path)
    assert documents, f"{path.name} holds no resource"
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_validator_rejects_a_misspelt_field() -> None:
    """Strict validation must catch a key Kubernetes would silently drop, or the test above proves nothing."""
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_existing_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(set(resources)) == len(resources)
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists {resource}, which does not exist"
    listed = {kind for r in resources for kind in (d["kind"] for d in _documents(K8S / r))}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "PersistentVolumeClaim"} <= listed


# --- Flux configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["configmap", "image"])
def test_config_passes_flux_validation_and_listens_on_every_interface(which: str) -> None:
    config = _configmap_config() if which == "configmap" else flux_config.load(EXAMPLE_CONFIG)
    assert config.server.host == "0.0.0.0", "inside a container the server must listen beyond loopback"
    assert config.indexes, "the example config serves no index"


def test_both_configs_listen_on_the_same_port() -> None:
    assert _configmap_config().server.port == flux_config.load(EXAMPLE_CONFIG).server.port


# --- Deployment -----------------------------------------------------------------------------


def test_termination_grace_outlasts_the_server_drain() -> None:
    """The kubelet SIGKILLs after terminationGracePeriodSeconds, counted from the start of preStop."""
    pod = _deployment()["spec"]["template"]["spec"]
    pre_stop = _container().get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = _configmap_config().server.grace_seconds
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


def test_probes_use_grpc_health_on_the_configured_port() -> None:
    container = _container()
    port = _configmap_config().server.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, f"the flux container has no {probe}"
        assert set(container[probe]) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}
        assert container[probe]["grpc"]["port"] == port, f"{probe} checks a port the server does not listen on"
        assert container[probe]["grpc"].get("service", "") == "", f"{probe} must check the whole server"
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]


def test_services_reach_the_grpc_port_of_the_pods() -> None:
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    services = [_resource("Service", "flux"), _resource("Service", "flux-headless")]
    assert services[0]["spec"].get("clusterIP") != "None"
    assert services[1]["spec"]["clusterIP"] == "None"
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["grpc"]


def test_disruption_budget_covers_the_pods_and_leaves_some_up() -> None:
    deployment = _deployment()
    pdb = _resource("PodDisruptionBudget", "flux")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["maxUnavailable"] < deployment["spec"]["replicas"]


def test_config_map_is_mounted_where_the_server_reads_it() -> None:
    container = _container()
    args = container["args"]
    config_path = PurePosixPath(args[args.index("--config") + 1])
    pod = _deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert [PurePosixPath(m["mountPath"]) for m in mounts] == [config_path.parent]
    configmap = volumes[mounts[0]["name"]]["configMap"]["name"]
    assert config_path.name in _resource("ConfigMap", configmap)["data"]


def test_indexes_live_on_the_read_only_index_volume() -> None:
    container = _container()
    pod = _deployment()["spec"]["template"]["spec"]
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert len(mounts) == 1
    assert mounts[0]["readOnly"] is True
    root = Path(mounts[0]["mountPath"])
    for index in _configmap_config().indexes:
        assert index.path.is_relative_to(root), f"index {index.name} is not on the index volume ({root})"


def test_resources_have_requests_and_limits() -> None:
    resources = _container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"the flux container sets no {kind} for cpu and memory"


def test_pods_run_as_non_root_with_a_read_only_root() -> None:
    for pod in (_deployment()["spec"]["template"]["spec"], _resource("Pod", "flux-index-loader")["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


# --- Container image ------------------------------------------------------------------------


def _hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An empty config file, so a hadolint.yaml elsewhere on the machine cannot silence rules.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n", encoding="utf-8")
    return subprocess.run(
        [_tool("hadolint"), "--config", str(config), "--format", "tty", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_lints_clean(tmp_path: Path) -> None:
    result = _hadolint(DOCKERFILE, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """hadolint must flag an untagged base image and an unpinned apt install, or the lint above proves nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y g++\n", encoding="utf-8")
    result = _hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3006" in result.stdout
    assert "DL3008" in result.stdout


def test_image_is_multi_stage_with_a_compiler_free_runtime() -> None:
    stages = _stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert " AS builder" in builder[0][1]
    base = runtime[0][1]
    assert "slim" in base, f"the runtime stage should start from a slim image, not {base}"
    runs = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    assert "from=builder" in runs
    assert "apt-get" not in runs


def test_image_runs_as_the_manifests_non_root_user() -> None:
    runtime = _stages()[-1]
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users, "the runtime stage sets no USER, so it runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "USER must be numeric for Kubernetes' runAsNonRoot check"
    assert int(uid) > 0
    pod = _deployment()["spec"]["template"]["spec"]["securityContext"]
    assert (int(uid), int(gid or uid)) == (pod["runAsUser"], pod["runAsGroup"])


def test_image_serves_its_config_on_the_exposed_and_health_checked_port() -> None:
    runtime = dict(_stages()[-1])
    port = flux_config.load(EXAMPLE_CONFIG).server.port
    assert runtime["EXPOSE"].split() == [str(port)]
    assert f"127.0.0.1:{port}" in runtime["HEALTHCHECK"]
    assert '"flux", "health"' in runtime["HEALTHCHECK"]
    command = [*yaml.safe_load(runtime["ENTRYPOINT"]), *yaml.safe_load(runtime["CMD"])]
    config_path = command[command.index("--config") + 1]
    assert command[:2] == ["flux", "serve"]
    assert (["deploy/config/flux.yaml"], config_path) in _local_copies(_stages()[-1])


def test_build_context_admits_every_copied_path() -> None:
    """The Dockerfile.dockerignore starts by excluding everything; each COPY source must be let back in."""
    admitted = [
        line[1:].rstrip("/") for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if line.startswith("!")
    ]
    for stage in _stages():
        for sources, _ in _local_copies(stage):
            for source in sources:
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
                name = source.rstrip("/")
                assert any(name == a or name.startswith(a + "/") for a in admitted), f"{source} is dockerignored"


def test_builder_stage_sources_are_enough_to_build_the_wheels(tmp_path: Path) -> None:
    """Copy exactly what the builder stage copies and build the two Flux wheels from it."""
    builder = _stages()[0]
    workdir = PurePosixPath(next(arguments for keyword, arguments in builder if keyword == "WORKDIR"))
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for sources, destination in _local_copies(builder):
        target = src / (workdir / destination).relative_to(workdir)
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=ignore)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    out = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out)]
    result = subprocess.run(
        [*pip_wheel, "./clients/python", "./core", "./backends", "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wheels = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(wheels) == {"flux_client", "flux_core", "flux_backends", "flux_server"}
    server, backends, core = (_wheel_files(wheels[name]) for name in ("flux_server", "flux_backends", "flux_core"))
    assert "flux = flux.cli:main" in server["entry_points.txt"]
    assert {"exact", "hnsw", "annoy"} <= {line.split(" =")[0] for line in backends["entry_points.txt"].splitlines()}
    assert "flux/server.py" in server["names"]
    assert "flux_backends/hnsw.py" in backends["names"]
    assert "flux_core/storage/artifact.py" in core["names"]
    assert not [n for n in server["names"] if "bench" in n], (
        "the server wheel carries benchmark code (flux-bench has it)"
    )
    # A pipeline worker installs flux-core without the server: numpy must be all it pulls in.
    assert [line for line in core["METADATA"].splitlines() if line.startswith("Requires-Dist")] == [
        "Requires-Dist: numpy>=1.24"
    ]
    names = server["names"].splitlines()
    # setuptools only warns when a license file is missing; the image must still ship it.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for license_file in project.get("license-files", []):
        assert any(n.endswith(f".dist-info/licenses/{license_file}") for n in names), f"{license_file} not copied"


def _wheel_files(path: Path) -> dict[str, str]:
    """A wheel's file names (under "names") and its entry points and metadata."""
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        read = {
            n.rsplit("/", 1)[-1]: wheel.read(n).decode()
            for n in names
            if n.endswith((".dist-info/METADATA", "entry_points.txt"))
        }
    return {"names": "\n".join(names), **read}


# --- the sharded deployment (deploy/k8s/sharded) ------------------------------------------------

SHARDED = K8S / "sharded"
SHARDED_MANIFESTS = sorted(p for p in SHARDED.glob("*.yaml") if p.name != "kustomization.yaml")


def _sharded(kind: str) -> list[dict[str, Any]]:
    return [d for p in SHARDED_MANIFESTS for d in _documents(p) if d["kind"] == kind]


def _named(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in _sharded(kind) if d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", SHARDED_MANIFESTS, ids=lambda p: p.name)
def test_sharded_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    documents = _documents(path)
    assert documents, f"{path.name} holds no resource"
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_sharded_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((SHARDED / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(p.name for p in SHARDED_MANIFESTS)


def test_router_config_names_a_headless_service_per_shard_that_selects_that_shard_only() -> None:
    data = _named("ConfigMap", "flux-router-config")["data"]
    config = flux_config.parse(yaml.safe_load(data["flux.yaml"]), source="deploy/k8s/sharded: flux-router-config")
    assert config.router is not None
    [index] = config.router.indexes
    assert config.server.host == "0.0.0.0"
    shard_configs = _named("ConfigMap", "flux-shard-config")["data"]
    for number, target in enumerate(index.shards):
        match = re.fullmatch(r"dns:///(flux-shard-\d+)\.flux\.svc:(\d+)", target)
        assert match, target
        service, deployment = _named("Service", match[1]), _named("Deployment", match[1])
        assert service["spec"]["clusterIP"] == "None"
        assert [p["port"] for p in service["spec"]["ports"]] == [int(match[2])]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        others = [d for d in _sharded("Deployment") if d["metadata"]["name"] != match[1]]
        assert not any(
            service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in others
        )
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        config_file = PurePosixPath(container["args"][container["args"].index("--config") + 1]).name
        shard = flux_config.parse(yaml.safe_load(shard_configs[config_file]), source=config_file)
        [served] = shard.indexes
        assert served.name == index.on_shards
        assert served.path.name == index.shard_names()[number]
        assert shard.server.port == int(match[2])


def test_sharded_pods_probe_grpc_health_and_run_locked_down() -> None:
    deployments = _sharded("Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {f"flux-shard-{n}" for n in range(4)} | {"flux-router"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == 50051
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    router = _named("Service", "flux-router")
    assert (
        router["spec"]["selector"].items()
        <= _named("Deployment", "flux-router")["spec"]["template"]["metadata"]["labels"].items()
    )
