"""The workload a pod belongs to (Deployment, StatefulSet, DaemonSet, Job, ...), as `kubectl` names it.

From the pod's controller owner reference when known (the API watch, or `metadata.ownerReferences` of a
manifest): a ReplicaSet whose name is `<deployment>-<pod-template-hash>` belongs to that Deployment.
Without one (a bare manifest outside a cluster), from the names and labels the controllers give their pods:
`<deployment>-<hash>-<5 chars>` with label pod-template-hash, `<statefulset>-<ordinal>` with label
statefulset.kubernetes.io/pod-name, `<daemonset>-<5 chars>` with label controller-revision-hash, label
job-name. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: (kind, name) of a pod's owner; ("", "") when it has none Lumen can tell
Workload = tuple[str, str]
NONE: Workload = ("", "")

_SUFFIX = re.compile(r"^(?P<base>.+)-[a-z0-9]{5}$")  # what a controller appends to a pod's name
_ORDINAL = re.compile(r"^(?P<base>.+)-\d+$")


def workload(name: str, labels: Mapping[str, str], owners: Sequence[Workload] = ()) -> Workload:
    """The workload of pod `name` with `labels`, owned (controller first) by `owners`."""
    template_hash = labels.get("pod-template-hash", "")
    for kind, owner in owners[:1]:
        if kind == "ReplicaSet" and template_hash and owner.endswith(f"-{template_hash}"):
            return ("Deployment", owner[: -len(template_hash) - 1])
        return (kind, owner)
    if template_hash:
        m = _SUFFIX.match(name)
        if m and m["base"].endswith(f"-{template_hash}"):
            return ("Deployment", m["base"][: -len(template_hash) - 1])
    if labels.get("statefulset.kubernetes.io/pod-name") == name:
        m = _ORDINAL.match(name)
        if m:
            return ("StatefulSet", m["base"])
    job = labels.get("job-name") or labels.get("batch.kubernetes.io/job-name")
    if job:
        return ("Job", job)
    if "controller-revision-hash" in labels:
        m = _SUFFIX.match(name)
        if m:
            return ("DaemonSet", m["base"])
    return NONE


def owners_of(references: object) -> tuple[Workload, ...]:
    """(kind, name) of `metadata.ownerReferences` (dicts of a manifest, or the kubernetes client's
    objects), the controller first; malformed entries are skipped."""
    if not isinstance(references, list | tuple):
        return ()
    out: list[tuple[bool, Workload]] = []
    for ref in references:
        get = ref.get if isinstance(ref, dict) else lambda k, r=ref: getattr(r, k, None)
        kind, name = get("kind"), get("name")
        if isinstance(kind, str) and isinstance(name, str) and kind and name:
            out.append((not get("controller"), (kind, name)))
    return tuple(w for _, w in sorted(out, key=lambda e: e[0]))
