"""A rendered pod's container as a kubelet and its runtime would start it, as data and argv.

``launch`` reads one Deployment's or DaemonSet's pod template (as ``kubectl kustomize``
renders it) and the image's configuration, and decides what the container's process is: its
argv from Kubernetes' rules (``command`` replaces the image's ENTRYPOINT, ``args`` its CMD;
``args`` alone run after the ENTRYPOINT; ``$(VAR)`` expanded from the container's variables,
``$$`` an escaped ``$``), its whole environment (``HOSTNAME``, the image's, the container's
``env`` with ``valueFrom.fieldRef`` resolved as the kubelet resolves it, the ``kubernetes``
service's variables, and the other services' when ``enableServiceLinks`` is on), its user
and groups (the container's ``securityContext`` over the pod's over the image's ``USER``),
whether its root is read-only, its pod's name (a ReplicaSet's ``<name>-<hash>-<suffix>``, a
DaemonSet's ``<name>-<suffix>``), UID, QoS class and the runtime's container ID. A node
agent's pod is taken too, and only as far as it needs: ``hostPID``, root with exactly the
capabilities its ``securityContext`` lists (``drop: [ALL]`` and ``add``), and ``hostPath``
volumes mounted read-only. What it cannot do as a kubelet would (root without ``drop:
[ALL]``, a privileged container, the host's network or IPC namespace, a writable hostPath, a
Secret, a working directory other than ``/``) is a ``PodError`` that says so.

``argv`` turns a ``Launch`` into a command line that runs it on this machine, where no
container runtime can: a new mount, UTS, IPC and PID namespace (``unshare``; the host's PID
namespace for ``hostPID``), the image's filesystem under a writable layer of the container's
own (overlayfs on tmpfs, as a runtime's snapshot), ``/proc``, ``/sys``, a small ``/dev``, the
kubelet's ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf``, emptyDir and hostPath
volumes, then the root remounted read-only when asked; ``env -i`` and, for a non-root user,
``setpriv --no-new-privs`` and ``chroot --userspec`` exec the container's argv (as PID 1 of
the new PID namespace); for root, ``capsh`` chroots, drops every capability the container
does not list from the bounding set (and the inheritable and ambient sets), sets no new
privileges and execs it, so that root's capabilities after the exec are exactly the listed
ones, as runc gives them. Where asked, the process first joins its container's cgroup, as
the runtime puts it there. The network namespace is the caller's (a lab pod's namespace).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
CLUSTER_DOMAIN = "cluster.local"
# The `kubernetes` service's variables are in every container, links or not: kind's address.
KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT = "10.96.0.1", 443


# The names pods are given from: k8s.io/apimachinery/pkg/util/rand's alphabet, without vowels
# and the digits 0, 1 and 3 (no words, nothing to misread).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5  # a generated name's random suffix (names.SimpleNameGenerator)
# Linux's capabilities by number (include/uapi/linux/capability.h, up to 6.x's last).
CAPABILITIES = (
    *("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID"),
    *("SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST"),
    *("NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO"),
    *("SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE"),
    *("SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE"),
    *("AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM"),
    *("BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"),
)
# The hostPath types whose check the kubelet makes before the pod starts; the others (a
# file, a socket, a device) no DaemonSet here asks for.
HOST_PATH_TYPES = ("", "Directory", "DirectoryOrCreate")


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
class HostPathMount:
    """A ``hostPath`` volume as the container mounts it: always read-only here."""

    volume: str
    host_path: str  # on the node, as the manifest names it
    mount_path: str
    kind: str  # the hostPath's type: "", Directory or DirectoryOrCreate


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
    workload: str = ""  # the Deployment or DaemonSet the pod is of
    pod_uid: str = ""  # the API server's UID for the pod
    container_id: str = ""  # the runtime's, 64 hex digits as containerd's
    qos_class: str = "BestEffort"  # Guaranteed, Burstable or BestEffort, from the resources
    host_pid: bool = False  # hostPID: the host's PID namespace, and its /proc
    # Root's capabilities, exactly (CAP_ names without the prefix); None for a non-root user,
    # who has none after the switch.
    capabilities: tuple[str, ...] | None = None
    host_paths: tuple[HostPathMount, ...] = ()

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


# -- user, groups, capabilities, volumes ----------------------------------------------------------


def identity(container: Obj, pod: Obj, image: ImageConfig) -> tuple[int, int, tuple[int, ...]]:
    """uid, gid and supplementary groups: the container's securityContext over the pod's
    over the image's USER (numeric only: a name would need the image's /etc/passwd). Root
    only where the container says exactly which capabilities it has (``capabilities``)."""
    pod_context = pod["spec"].get("securityContext") or {}
    context = {**pod_context, **(container.get("securityContext") or {})}
    image_user, _, image_group = image.user.partition(":")
    try:
        uid = int(context.get("runAsUser", image_user or 0))
        gid = int(context.get("runAsGroup", image_group or 0))
    except ValueError:
        raise PodError(f"the image's USER {image.user!r} is not numeric") from None
    if uid == 0:
        refuse_root(container, context)
    extra = [*pod_context.get("supplementalGroups", [])]
    if "fsGroup" in pod_context:
        extra.append(pod_context["fsGroup"])
    groups = tuple(dict.fromkeys([gid, *(int(g) for g in extra)]))
    return uid, gid, groups


def refuse_root(container: Obj, context: Obj) -> None:
    """A ``PodError`` unless a root container may run here: runAsNonRoot not set, and its
    capabilities said in full (``drop: [ALL]``), which ``capabilities`` then gives it."""
    name = container["name"]
    if context.get("runAsNonRoot"):
        why = "runAsNonRoot forbids it"
    elif capabilities(container) is None:
        why = (
            "not supported here unless its securityContext drops ALL capabilities and adds "
            "the ones it needs"
        )
    else:
        return
    raise PodError(
        f"container {name!r} would run as root: {why} "
        "(a root container would keep this machine's capabilities)"
    )


def capabilities(container: Obj) -> tuple[str, ...] | None:
    """The capabilities a root container has, exactly, as runc gives them (bounding,
    permitted and effective sets): those it adds, when it drops ALL; None when it does not
    drop ALL, which would leave it the runtime's default set. Names as Kubernetes takes
    them, with or without ``CAP_``, in any case."""
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        raise PodError(f"container {container['name']!r}: privileged containers are not run here")
    asked = context.get("capabilities") or {}
    if "ALL" not in [str(name).upper() for name in asked.get("drop") or []]:
        return None
    added = [str(name).upper().removeprefix("CAP_") for name in asked.get("add") or []]
    unknown = [name for name in added if name not in CAPABILITIES]
    if unknown:
        raise PodError(f"container {container['name']!r}: {unknown[0]!r} is no capability")
    return tuple(sorted(set(added), key=CAPABILITIES.index))


def empty_dirs(container: Obj, pod: Obj) -> tuple[tuple[str, str], ...]:
    """The container's mounts of emptyDir volumes."""
    return tuple((m["name"], m["mountPath"]) for m in _mounts(container, pod)["emptyDir"])


def host_paths(container: Obj, pod: Obj) -> tuple[HostPathMount, ...]:
    """The container's mounts of hostPath volumes: read-only ones of a directory only."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in _mounts(container, pod)["hostPath"]:
        source = volumes[mount["name"]]["hostPath"]
        kind = source.get("type") or ""
        if kind not in HOST_PATH_TYPES:
            raise PodError(f"volume {mount['name']!r}: hostPath type {kind!r} is not supported")
        if not mount.get("readOnly"):
            raise PodError(
                f"volume {mount['name']!r}: only readOnly hostPath mounts are supported here "
                "(a writable one would write on this machine)"
            )
        mounts.append(HostPathMount(mount["name"], source["path"], mount["mountPath"], kind))
    return tuple(mounts)


def _mounts(container: Obj, pod: Obj) -> dict[str, list[Obj]]:
    """The container's volume mounts by their volume's kind; any other kind is refused, and
    so are a subPath and a read-only emptyDir."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    kinds: dict[str, list[Obj]] = {"emptyDir": [], "hostPath": []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"]) or {}
        kind = next((k for k in kinds if k in volume), None)
        if kind is None:
            raise PodError(
                f"volume {mount['name']!r}: only emptyDir and hostPath volumes are supported here"
            )
        if mount.get("subPath") or (kind == "emptyDir" and mount.get("readOnly")):
            raise PodError(f"volume {mount['name']!r}: subPath and readOnly are not supported")
        kinds[kind].append(mount)
    return kinds


def host_namespaces(pod: Obj) -> bool:
    """Whether the pod shares the host's PID namespace (``hostPID``); the host's network and
    IPC namespaces are refused: the network namespace is the lab's."""
    spec = pod["spec"]
    for shared in ("hostNetwork", "hostIPC"):
        if spec.get(shared):
            raise PodError(f"{shared} is not supported here: the pod's namespaces are the lab's")
    return bool(spec.get("hostPID"))


# -- the pod's name, UID, QoS class and cgroups ----------------------------------------------------


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash, as Go's hash/fnv New32a."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Obj) -> str:
    """A ReplicaSet's ``pod-template-hash`` as its controller shapes it: a 32-bit FNV-1a of
    the pod template, its decimal digits spelt in ``SAFE_ALPHABET`` (controller.ComputeHash,
    rand.SafeEncodeString). The hash is over the template's JSON, not Go's object dump, so
    the value is not the API server's; a changed template gets another, as there."""
    digits = str(fnv1a_32(json.dumps(template, sort_keys=True).encode()))
    return "".join(SAFE_ALPHABET[ord(digit) % len(SAFE_ALPHABET)] for digit in digits)


def pod_name(workload: Obj, suffix: str) -> str:
    """The name a pod of ``workload`` gets: ``<deployment>-<hash>-<suffix>`` through its
    ReplicaSet, ``<daemonset>-<suffix>``."""
    name = workload["metadata"]["name"]
    if workload["kind"] == "Deployment":
        return f"{name}-{template_hash(workload['spec']['template'])}-{suffix}"
    return f"{name}-{suffix}"


def random_suffix() -> str:
    return "".join(secrets.choice(SAFE_ALPHABET) for _ in range(SUFFIX_LENGTH))


_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)")
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"),
    **{suffix: Decimal(10) ** (3 * power) for power, suffix in enumerate("kMGTPE", 1)},
    **{f"{suffix}i": Decimal(2) ** (10 * power) for power, suffix in enumerate("KMGTPE", 1)},
}  # fmt: skip


def quantity(text: object) -> Decimal:
    """A resource quantity's value (``500m``, ``0.5``, ``64Mi``, ``1e3``)."""
    found = _QUANTITY.fullmatch(str(text).strip())
    if found is None or found.group(2) not in _SUFFIXES:
        raise PodError(f"{text!r} is not a resource quantity")
    try:
        return Decimal(found.group(1)) * _SUFFIXES[found.group(2)]
    except InvalidOperation:
        raise PodError(f"{text!r} is not a resource quantity") from None


def qos_class(pod: Obj) -> str:
    """The pod's QoS class from its containers' cpu and memory (pkg/apis/core/v1/helper/qos,
    GetPodQOS): BestEffort without any request or limit; Guaranteed when every container
    limits both and requests, where given, equal the limits; else Burstable."""
    containers = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    any_set, guaranteed = False, True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = (
            {
                k: quantity(v)
                for k, v in (resources.get(kind) or {}).items()
                if k in ("cpu", "memory")
            }
            for kind in ("requests", "limits")
        )
        requests = {k: v for k, v in requests.items() if v}
        limits = {k: v for k, v in limits.items() if v}
        any_set = any_set or bool(requests or limits)
        if set(limits) != {"cpu", "memory"} or any(limits[k] != v for k, v in requests.items()):
            guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def pod_cgroup(spec: Launch) -> str:
    """The pod's cgroup as the kubelet names it with the systemd driver, below the cgroup
    root: ``kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid>.slice``, the
    UID's ``-`` escaped to ``_`` (pod_container_manager_linux.go, cgroup_manager_linux.go)."""
    uid = spec.pod_uid.replace("-", "_")
    if spec.qos_class == "Guaranteed":
        return f"kubepods.slice/kubepods-pod{uid}.slice"
    qos = spec.qos_class.lower()
    return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"


def container_cgroup(spec: Launch) -> str:
    """The container's cgroup as containerd names it with the systemd driver, below the
    pod's: ``cri-containerd-<id>.scope``."""
    return f"{pod_cgroup(spec)}/cri-containerd-{spec.container_id}.scope"


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


@dataclass(frozen=True)
class Assigned:
    """What the API server and the runtime give a pod's container: its pod's name suffix
    and UID, and the container's ID (random, as there, unless given)."""

    suffix: str = field(default_factory=random_suffix)
    pod_uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    container_id: str = field(default_factory=lambda: secrets.token_hex(32))


WORKLOADS = ("Deployment", "DaemonSet")


def launch(
    workload: Obj,
    image: ImageConfig,
    place: Place,
    services: Sequence[Obj] = (),
    given: Assigned | None = None,
) -> Launch:
    """The Deployment's or DaemonSet's one container as a pod of it would run it."""
    if workload.get("kind", "Deployment") not in WORKLOADS:
        raise PodError(f"a {workload['kind']} is not run here, only {' or '.join(WORKLOADS)}")
    given = given or Assigned()
    template = workload["spec"]["template"]
    name = pod_name({"kind": "Deployment", **workload}, given.suffix)
    metadata = {**template.get("metadata", {}), "name": name, "uid": given.pod_uid}
    pod = {"metadata": metadata, "spec": template["spec"]}
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
    listed = capabilities(container)  # read for every user: a privileged one is refused
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
        workload=workload["metadata"]["name"],
        pod_uid=given.pod_uid,
        container_id=given.container_id,
        qos_class=qos_class(pod),
        host_pid=host_namespaces(pod),
        capabilities=listed if uid == 0 else None,
        host_paths=host_paths(container, pod),
    )


# -- running it on this machine ---------------------------------------------------------------

# Runs as root in unshare's new namespaces (PID 1 of the new PID namespace until the exec at
# the end hands that to the container's process; with hostPID, a process of the host's). Each
# volume is (source, mount path, rw|ro). Mount points are made while the root is still
# writable, then it is remounted read-only, as runc does; a read-only bind mount is a bind
# mount remounted read-only, as the kernel wants it.
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
    if [ "$3" = ro ]; then
        mount -o remount,bind,ro "$root$2"
    fi
    shift 3
done
shift
if [ "$read_only" = true ]; then
    mount -o remount,ro "$root"
fi
hostname "$hostname"
exec "$@"
"""
# The runtime puts the container's first process in its cgroup before it runs: this one
# joins it, then becomes the rest of the command line.
JOIN_CGROUP = 'echo $$ > "$1" && shift && exec "$@"'
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # runc's


def node_path(node_root: Path, host_path: str) -> Path:
    """Where a hostPath of the node is on this machine: under ``node_root``."""
    parts = Path(host_path).parts
    if not host_path.startswith("/") or ".." in parts:
        raise PodError(f"hostPath {host_path!r} is not an absolute path without '..'")
    return node_root.joinpath(*parts[1:])


def prepare(spec: Launch, pod_dir: Path, node_root: Path = Path("/")) -> None:
    """The kubelet's side of the pod on disk: its files, its emptyDir directories, and its
    hostPath volumes checked as their type asks (``DirectoryOrCreate`` made)."""
    for mount in spec.host_paths:
        source = node_path(node_root, mount.host_path)
        if mount.kind == "DirectoryOrCreate":
            source.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not source.is_dir():
            raise PodError(
                f"volume {mount.volume!r}: hostPath {mount.host_path!r} is not a directory "
                f"on this node ({source})"
            )
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


def argv(
    spec: Launch,
    rootfs: Path,
    pod_dir: Path,
    node_root: Path = Path("/"),
    cgroup_procs: Path | None = None,
) -> list[str]:
    """The command line that runs ``spec`` here (as root, after ``prepare``): hostPath
    volumes from under ``node_root``; first into the cgroup whose ``cgroup.procs`` is
    ``cgroup_procs`` (as the command line reaches it), where one is given."""
    mounts = [
        *(w for v, path in spec.empty_dirs for w in (str(pod_dir / "volumes" / v), path, "rw")),
        *(
            word
            for mount in spec.host_paths
            for word in (str(node_path(node_root, mount.host_path)), mount.mount_path, "ro")
        ),
    ]
    shared = ("--mount", "--uts", "--ipc")
    joined = [] if cgroup_procs is None else ["sh", "-c", JOIN_CGROUP, "kubelet-cgroup"]
    return [
        *joined,
        *([] if cgroup_procs is None else [str(cgroup_procs)]),
        *("unshare", *shared, *(() if spec.host_pid else ("--pid", "--fork"))),
        *("sh", "-c", MOUNT_SCRIPT, "kubelet-launch", str(rootfs), str(pod_dir)),
        *(str(spec.read_only_root).lower(), spec.pod, *mounts, "--"),
        *("env", "-i", *(f"{name}={value}" for name, value in spec.env)),
        *exec_as_user(spec, rootfs, pod_dir / "root"),
    ]


def exec_as_user(spec: Launch, rootfs: Path, root: Path) -> list[str]:
    """The end of the command line: into the container's root as its user, and exec. A
    non-root user has no capability after the switch; root gets exactly its listed ones."""
    groups = ",".join(str(group) for group in spec.groups)
    if spec.capabilities is None:
        chroot = shutil.which("chroot") or "chroot"
        return [
            *("setpriv", "--no-new-privs", chroot, f"--userspec={spec.uid}:{spec.gid}"),
            *(f"--groups={groups}", str(root), *spec.argv),
        ]
    missing = [name for name in spec.capabilities if name not in bounding_set()]
    if missing:
        raise PodError(f"this machine's bounding set lacks {', '.join(missing)}: not ours to give")
    dropped = [name for name in all_capabilities() if name not in spec.capabilities]
    return [
        *(shutil.which("capsh") or "capsh", "--inh=", "--noamb", f"--chroot={root}"),
        *(f"--gid={spec.gid}", f"--groups={groups}"),
        f"--drop={','.join(capsh_name(name) for name in dropped)}",
        *("--no-new-privs", f"--shell={on_path(spec, rootfs)}", "--", *spec.argv[1:]),
    ]


def all_capabilities() -> list[str]:
    """Every capability this kernel has, by name (its number where the table has none)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return [CAPABILITIES[n] if n < len(CAPABILITIES) else str(n) for n in range(last + 1)]


def bounding_set() -> set[str]:
    """The capabilities this process may give: its bounding set's, by name."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mask = int(fields["CapBnd"], 16)
    return {name for number, name in enumerate(all_capabilities()) if mask >> number & 1}


def capsh_name(name: str) -> str:
    return name if name.isdigit() else f"cap_{name.lower()}"


def on_path(spec: Launch, rootfs: Path) -> str:
    """The container's executable as runc finds it: a name with a ``/`` as it is, another
    looked up on the container's ``PATH`` inside its root filesystem."""
    command = spec.argv[0]
    if "/" in command:
        return command
    for directory in spec.environment.get("PATH", DEFAULT_PATH).split(":"):
        # lexists: a link's target is inside the image, where the exec follows it.
        if directory.startswith("/") and os.path.lexists(rootfs / directory.lstrip("/") / command):
            return f"{directory.rstrip('/')}/{command}"
    raise PodError(f"container {spec.container!r}: {command!r} is not on the image's PATH")
