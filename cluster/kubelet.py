"""A rendered pod's container as a kubelet and its runtime would start it, as data and argv.

``launch`` reads one Deployment's pod template (as ``kubectl kustomize`` renders it) and the
image's configuration, and decides what the container's process is: its argv from
Kubernetes' rules (``command`` replaces the image's ENTRYPOINT, ``args`` its CMD; ``args``
alone run after the ENTRYPOINT; ``$(VAR)`` expanded from the container's variables, ``$$``
an escaped ``$``), its whole environment (``HOSTNAME``, the image's, the container's
``env`` with ``valueFrom.fieldRef`` resolved as the kubelet resolves it, the ``kubernetes``
service's variables, and the other services' when ``enableServiceLinks`` is on), its user
and groups (the container's ``securityContext`` over the pod's over the image's ``USER``),
and whether its root is read-only. What it cannot do as a kubelet would (a root user, a
Secret, a working directory other than ``/``) is a ``PodError`` that says so.

``argv`` turns a ``Launch`` into a command line that runs it on this machine, where no
container runtime can: a new mount, UTS, IPC and PID namespace (``unshare``), the image's
filesystem under a writable layer of the container's own (overlayfs on tmpfs, as a
runtime's snapshot), ``/proc``, ``/sys``, a small ``/dev``, the kubelet's ``/etc/hosts``,
``/etc/hostname`` and ``/etc/resolv.conf``, emptyDir volumes, then the root remounted
read-only when asked; ``env -i``, ``setpriv --no-new-privs`` and ``chroot --userspec`` exec
the container's argv as PID 1 of the new PID namespace. The network namespace is the
caller's (the lab's pod namespace).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
CLUSTER_DOMAIN = "cluster.local"
# The `kubernetes` service's variables are in every container, links or not: kind's address.
KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT = "10.96.0.1", 443


class PodError(ValueError):
    """A manifest this launcher cannot start the way a kubelet would; the message says why."""


@dataclass(frozen=True)
class ImageConfig:
    """What of the image's configuration a runtime uses to start a container."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: str = ""
    working_dir: str = ""

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> ImageConfig:
        """From an OCI image configuration's ``config`` object (``buildah inspect``)."""
        env = tuple(tuple(item.split("=", 1)) for item in config.get("Env") or [])
        return cls(
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=tuple((name, value) for name, value in env),
            user=config.get("User") or "",
            working_dir=config.get("WorkingDir") or "",
        )


@dataclass(frozen=True)
class Place:
    """Where the pod runs: what the kubelet knows and ``fieldRef`` can ask for."""

    namespace: str
    pod_ip: str
    node: str = "lab-node"
    host_ip: str = "10.244.0.1"  # the node's address as the pod sees it (status.hostIP)
    # A Service's name -> its ClusterIP, for /etc/hosts and the service links.
    services: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """One container's process, as the runtime starts it."""

    pod: str
    namespace: str
    container: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # the process's whole environment, in order
    uid: int
    gid: int
    groups: tuple[int, ...]
    read_only_root: bool
    empty_dirs: tuple[tuple[str, str], ...]  # (volume, mount path)
    hosts: str  # /etc/hosts as the kubelet writes it, with the services' names
    resolv_conf: str

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.env)


# -- command, args and $(VAR) ----------------------------------------------------------------


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable's value, ``$$`` a literal ``$``,
    and anything else (an undefined name, an unclosed ``$(``) left as written."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$" or index + 1 >= len(text):
            out.append(char)
            index += 1
            continue
        following = text[index + 1]
        if following == "$":
            out.append("$")
            index += 2
        elif following == "(" and (end := text.find(")", index + 2)) != -1:
            name = text[index + 2 : end]
            out.append(variables.get(name, text[index : end + 1]))
            index = end + 1
        else:
            out.append("$" + following)
            index += 2
    return "".join(out)


def command_line(
    container: Obj, image: ImageConfig, variables: Mapping[str, str]
) -> tuple[str, ...]:
    """The container's argv: ``command`` replaces ENTRYPOINT (and drops CMD), ``args``
    replace CMD, each expanded with the container's variables."""
    command = container.get("command")
    args = container.get("args")
    # The manifest's words are expanded; the image's own ENTRYPOINT and CMD are not.
    if command is not None:
        words = tuple(expand(word, variables) for word in [*command, *(args or [])])
    elif args is not None:
        words = (*image.entrypoint, *(expand(word, variables) for word in args))
    else:
        words = (*image.entrypoint, *image.cmd)
    if not words:
        raise PodError(f"container {container['name']!r}: no command, and none in the image")
    return words


# -- the environment ---------------------------------------------------------------------------


def field_value(path: str, pod: Obj, place: Place) -> str:
    """What a ``valueFrom.fieldRef`` reads: the fields the kubelet resolves."""
    metadata = pod["metadata"]
    simple = {
        "metadata.name": metadata["name"],
        "metadata.namespace": place.namespace,
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": place.node,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": place.host_ip,
        "status.hostIPs": place.host_ip,
        "status.podIP": place.pod_ip,
        "status.podIPs": place.pod_ip,
    }
    if path in simple:
        return str(simple[path])
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        return str((metadata.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    raise PodError(f"fieldRef {path!r} is not a field a kubelet resolves")


def service_variables(place: Place, services: Sequence[Obj], links: bool) -> dict[str, str]:
    """The docker-link style variables: the ``kubernetes`` service's always, the
    namespace's services' when ``enableServiceLinks`` is on (the kubelet's default)."""
    chosen: list[tuple[str, str, list[Obj]]] = [
        ("kubernetes", KUBERNETES_SERVICE_IP, [{"name": "https", "port": 443}])
    ]
    if links:
        chosen += [
            (s["metadata"]["name"], place.services[s["metadata"]["name"]], s["spec"]["ports"])
            for s in services
        ]
    variables: dict[str, str] = {}
    for name, address, ports in chosen:
        prefix = name.upper().replace("-", "_")
        first = ports[0]
        variables[f"{prefix}_SERVICE_HOST"] = address
        variables[f"{prefix}_SERVICE_PORT"] = str(first["port"])
        variables[f"{prefix}_PORT"] = f"tcp://{address}:{first['port']}"
        for port in ports:
            proto = str(port.get("protocol", "TCP"))
            if "name" in port:
                port_name = port["name"].upper().replace("-", "_")
                variables[f"{prefix}_SERVICE_PORT_{port_name}"] = str(port["port"])
            base = f"{prefix}_PORT_{port['port']}_{proto}"
            variables[base] = f"{proto.lower()}://{address}:{port['port']}"
            variables[f"{base}_PROTO"] = proto.lower()
            variables[f"{base}_PORT"] = str(port["port"])
            variables[f"{base}_ADDR"] = address
    return variables


def container_variables(
    container: Obj, pod: Obj, place: Place, services: Sequence[Obj]
) -> dict[str, str]:
    """The variables the kubelet gives the runtime: the container's ``env`` in order, each
    value expanded with those before it and the services', then the services' own."""
    if container.get("envFrom"):
        raise PodError(f"container {container['name']!r}: envFrom is not supported here")
    links = pod["spec"].get("enableServiceLinks", True)
    from_services = service_variables(place, services, links)
    variables: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item or "valueFrom" not in item:
            variables[name] = expand(str(item.get("value", "")), {**from_services, **variables})
            continue
        source = item["valueFrom"]
        if set(source) != {"fieldRef"}:
            raise PodError(
                f"{name}: valueFrom {', '.join(sorted(source))} is not supported here "
                "(only fieldRef: no ConfigMap, Secret or resource values in the lab)"
            )
        variables[name] = field_value(source["fieldRef"]["fieldPath"], pod, place)
    return {**{k: v for k, v in from_services.items() if k not in variables}, **variables}


def process_environment(
    hostname: str, image: ImageConfig, variables: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The runtime's merge: HOSTNAME, then the image's variables, then the kubelet's, a
    later one replacing an earlier one of the same name in place."""
    merged: dict[str, str] = {"HOSTNAME": hostname}
    merged.update(image.env)
    merged.update(variables)
    return tuple(merged.items())


# -- user, groups, read-only root, volumes --------------------------------------------------------


def identity(container: Obj, pod: Obj, image: ImageConfig) -> tuple[int, int, tuple[int, ...]]:
    """uid, gid and supplementary groups: the container's securityContext over the pod's
    over the image's USER (numeric only: a name would need the image's /etc/passwd)."""
    pod_context = pod["spec"].get("securityContext") or {}
    context = {**pod_context, **(container.get("securityContext") or {})}
    image_user, _, image_group = image.user.partition(":")
    try:
        uid = int(context.get("runAsUser", image_user or 0))
        gid = int(context.get("runAsGroup", image_group or 0))
    except ValueError:
        raise PodError(f"the image's USER {image.user!r} is not numeric") from None
    if uid == 0:
        why = "runAsNonRoot forbids it" if context.get("runAsNonRoot") else "not supported here"
        raise PodError(
            f"container {container['name']!r} would run as root: {why} "
            "(a root container would keep this machine's capabilities)"
        )
    extra = [*pod_context.get("supplementalGroups", [])]
    if "fsGroup" in pod_context:
        extra.append(pod_context["fsGroup"])
    groups = tuple(dict.fromkeys([gid, *(int(g) for g in extra)]))
    return uid, gid, groups


def empty_dirs(container: Obj, pod: Obj) -> tuple[tuple[str, str], ...]:
    """The container's mounts of emptyDir volumes; any other kind is refused."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None or "emptyDir" not in volume:
            raise PodError(f"volume {mount['name']!r}: only emptyDir volumes are supported here")
        if mount.get("subPath") or mount.get("readOnly"):
            raise PodError(f"volume {mount['name']!r}: subPath and readOnly are not supported")
        mounts.append((mount["name"], mount["mountPath"]))
    return tuple(mounts)


# -- the kubelet's files --------------------------------------------------------------------------


def hosts_file(pod_ip: str, hostname: str, place: Place) -> str:
    """/etc/hosts as the kubelet writes it, and the services' DNS names: the lab has no
    cluster DNS, so the names a pod would resolve there are here, at the same addresses."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
        f"{pod_ip}\t{hostname}",
        "# tcpecho pods: the cluster DNS's answers for the namespace's services",
    ]
    for name, address in place.services.items():
        ns = place.namespace
        lines.append(f"{address}\t{name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc {name}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    """The kubelet's ClusterFirst search path; no nameserver, as the lab runs no DNS."""
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\noptions ndots:5\n"


# -- the whole container ----------------------------------------------------------------------


def launch(
    deployment: Obj, image: ImageConfig, place: Place, services: Sequence[Obj] = ()
) -> Launch:
    """The Deployment's one container as its first pod would run it."""
    template = deployment["spec"]["template"]
    name = f"{deployment['metadata']['name']}-0"
    pod = {"metadata": {**template.get("metadata", {}), "name": name}, "spec": template["spec"]}
    containers = pod["spec"]["containers"]
    if len(containers) != 1 or pod["spec"].get("initContainers"):
        raise PodError(f"{name}: only pods of one container (and no init containers) run here")
    container = containers[0]
    working_dir = container.get("workingDir") or image.working_dir or "/"
    if working_dir != "/":
        raise PodError(f"container {container['name']!r}: working directory {working_dir!r}")
    variables = container_variables(container, pod, place, services)
    uid, gid, groups = identity(container, pod, image)
    context = container.get("securityContext") or {}
    return Launch(
        pod=name,
        namespace=place.namespace,
        container=container["name"],
        argv=command_line(container, image, variables),
        env=process_environment(name, image, variables),
        uid=uid,
        gid=gid,
        groups=groups,
        read_only_root=bool(context.get("readOnlyRootFilesystem", False)),
        empty_dirs=empty_dirs(container, pod),
        hosts=hosts_file(place.pod_ip, name, place),
        resolv_conf=resolv_conf(place.namespace),
    )


# -- running it on this machine ---------------------------------------------------------------

# Runs as root in unshare's new namespaces (it is PID 1 there until the exec at the end, which
# hands PID 1 to the container's process). Mount points are made while the root is still
# writable, then it is remounted read-only, as runc does.
MOUNT_SCRIPT = """set -eu
image=$1 pod=$2 read_only=$3 hostname=$4
shift 4
root=$pod/root
mount -t tmpfs -o mode=0755 layer "$pod/layer"
mkdir "$pod/layer/upper" "$pod/layer/work"
layers="lowerdir=$image,upperdir=$pod/layer/upper,workdir=$pod/layer/work"
mount -t overlay -o "$layers" overlay "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs "$root/dev"
for device in null zero full random urandom tty; do
    touch "$root/dev/$device"
    mount --bind "/dev/$device" "$root/dev/$device"
done
mkdir "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
touch "$root/dev/termination-log"
mount --bind "$pod/termination-log" "$root/dev/termination-log"
for file in hosts hostname resolv.conf; do
    touch "$root/etc/$file"
    mount --bind "$pod/$file" "$root/etc/$file"
done
while [ "$1" != -- ]; do
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    shift 2
done
shift
if [ "$read_only" = true ]; then
    mount -o remount,ro "$root"
fi
hostname "$hostname"
exec "$@"
"""


def prepare(spec: Launch, pod_dir: Path) -> None:
    """The kubelet's side of the pod on disk: its files and its emptyDir directories."""
    for directory in ("root", "layer", "volumes"):
        (pod_dir / directory).mkdir(parents=True, exist_ok=True)
    (pod_dir / "hosts").write_text(spec.hosts)
    (pod_dir / "hostname").write_text(spec.pod + "\n")
    (pod_dir / "resolv.conf").write_text(spec.resolv_conf)
    (pod_dir / "termination-log").write_text("")
    (pod_dir / "termination-log").chmod(0o666)
    for volume, _ in spec.empty_dirs:
        volume_dir = pod_dir / "volumes" / volume
        volume_dir.mkdir(exist_ok=True)
        volume_dir.chmod(0o777)  # what the kubelet gives an emptyDir


def argv(spec: Launch, rootfs: Path, pod_dir: Path) -> list[str]:
    """The command line that runs ``spec`` here (as root, after ``prepare``)."""
    chroot = shutil.which("chroot") or "chroot"
    mounts = [
        word
        for volume, path in spec.empty_dirs
        for word in (str(pod_dir / "volumes" / volume), path)
    ]
    return [
        *("unshare", "--mount", "--uts", "--ipc", "--pid", "--fork"),
        *("sh", "-c", MOUNT_SCRIPT, "kubelet-launch", str(rootfs), str(pod_dir)),
        *(str(spec.read_only_root).lower(), spec.pod, *mounts, "--"),
        *("env", "-i", *(f"{name}={value}" for name, value in spec.env)),
        *("setpriv", "--no-new-privs", chroot, f"--userspec={spec.uid}:{spec.gid}"),
        *(f"--groups={','.join(str(g) for g in spec.groups)}", str(pod_dir / "root")),
        *spec.argv,
    ]
