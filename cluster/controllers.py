"""What Kubernetes' controllers make of a workload before any kubelet sees it: the Pod.

A kubelet (and ``podman kube play`` standing for one here) is given Pods, never Deployments
or DaemonSets: their controllers create the Pods from the workload's template. ``pod_of``
makes the Pod a ReplicaSet of a Deployment, or a DaemonSet, would create: the name
``<deployment>-<pod-template-hash>-<suffix>`` or ``<daemonset>-<suffix>``, the template's
labels (with ``pod-template-hash`` for a ReplicaSet's) and annotations, the workload's
namespace, and the template's spec unchanged. ``qos_class`` is the QoS class the API server
gives the pod, from which the kubelet names its cgroup (``cluster/node.py``).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from decimal import Decimal, InvalidOperation
from typing import Any

Obj = dict[str, Any]
WORKLOADS = ("Deployment", "DaemonSet")

# The names pods are given from: k8s.io/apimachinery/pkg/util/rand's alphabet, without vowels
# and the digits 0, 1 and 3 (no words, nothing to misread).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5  # a generated name's random suffix (names.SimpleNameGenerator)


class PodError(ValueError):
    """A manifest the pods session cannot run as a cluster would; the message says why."""


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


def pod_of(workload: Obj, suffix: str | None = None, namespace: str | None = None) -> Obj:
    """The Pod ``workload``'s controller would create, with one container (the pods session
    runs no more), its spec the template's, unchanged; in ``namespace`` where the workload
    names none (``kubectl apply -n``)."""
    kind = workload.get("kind")
    if kind not in WORKLOADS:
        raise PodError(f"a {kind} is not run here, only {' or '.join(WORKLOADS)}")
    template = copy.deepcopy(workload["spec"]["template"])
    metadata = template.get("metadata") or {}
    labels = dict(metadata.get("labels") or {})
    if kind == "Deployment":
        labels["pod-template-hash"] = template_hash(workload["spec"]["template"])
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(workload, suffix or random_suffix()),
            "namespace": workload["metadata"].get("namespace", namespace or "default"),
            "labels": labels,
            "annotations": dict(metadata.get("annotations") or {}),
        },
        "spec": template["spec"],
    }
    container_of(pod)
    return pod


def container_of(pod: Obj) -> Obj:
    """The pod's one container; a pod of more, or with init containers, is refused."""
    containers = pod["spec"].get("containers") or []
    if len(containers) != 1 or pod["spec"].get("initContainers"):
        name = pod["metadata"]["name"]
        raise PodError(f"{name}: only pods of one container (and no init containers) run here")
    container: Obj = containers[0]
    return container


def literal_environment(container: Obj) -> dict[str, str]:
    """The container's ``env`` given as values: what the session predicts from (the
    engine's environment for the container is checked against it once it is created)."""
    return {
        item["name"]: str(item["value"])
        for item in container.get("env") or []
        if "value" in item and "valueFrom" not in item
    }


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
