"""Endpoint records: one JSON file per pod attachment under <stateDir>/endpoints, read by the agent.

The record is written before anything is created for the pod (state "creating") and completed at the
end of ADD, so a plugin killed mid-ADD leaves a record that GC can follow to what it built.
"""

from __future__ import annotations

import os

from plugin import jsonio

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

ENDPOINTS_DIR = "endpoints"

try:  # the builtin module: hashlib loads OpenSSL (~3 ms) for one short digest
    # Which of these exists depends on the Python version: each ignore may be unused on another one.
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]  # Python >= 3.12
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment,unused-ignore]


def _hexdigest(data: bytes) -> str:
    digest: str = _sha256(data).hexdigest()
    return digest


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic, so DEL and GC find the host side even when the pod's netns is gone."""
    return "lmn" + _hexdigest(f"{container_id}/{ifname}".encode())[:11]


# NAME_MAX (255) less the ".tmp.<pid>" suffix write() adds while the record is being written.
_MAX_NAME = 255 - len(".tmp.") - 7


def record_path(state_dir: str, container_id: str, ifname: str) -> str:
    name = f"{container_id}_{ifname}.json"
    if len(name.encode()) > _MAX_NAME:
        # A container ID may be up to 255 characters: too long for a file name with the ifname. Readers
        # go by the record's content (all_records) or by this function, so the name only has to be stable.
        name = f"{_hexdigest(f'{container_id}/{ifname}'.encode())}_{ifname}.json"
    return os.path.join(state_dir, ENDPOINTS_DIR, name)


def write(state_dir: str, record: dict[str, Any]) -> None:
    path = record_path(state_dir, record["containerId"], record["ifname"])
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(jsonio.dumps(record))
    os.replace(tmp, path)


def _usable(record: object) -> bool:
    """A record whose fields the verbs and the agent read have their types. A torn record cannot happen
    (atomic replace) but a hand-edited or foreign one can: it is treated as unknown, never a traceback."""
    if not isinstance(record, dict):
        return False
    if not all(isinstance(record.get(k), str) for k in ("containerId", "ifname", "hostVeth")):
        return False
    if not all(isinstance(record[k], str) for k in ("netns", "network", "state") if k in record):
        return False
    if "pid" in record and type(record["pid"]) is not int:
        return False
    lists = [record[k] for k in ("ips", "linkLocal") if k in record]
    return all(isinstance(v, list) and all(isinstance(a, str) for a in v) for v in lists)


def read(state_dir: str, container_id: str, ifname: str) -> dict[str, Any] | None:
    try:
        with open(record_path(state_dir, container_id, ifname), "rb") as f:
            record: dict[str, Any] = jsonio.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # not JSON (hand-edited): unknown
    return record if _usable(record) else None


def remove(state_dir: str, container_id: str, ifname: str) -> None:
    try:
        os.unlink(record_path(state_dir, container_id, ifname))
    except FileNotFoundError:
        pass


def all_records(state_dir: str) -> list[dict[str, Any]]:
    directory = os.path.join(state_dir, ENDPOINTS_DIR)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                record = jsonio.loads(f.read())
        except (OSError, ValueError):
            continue
        if _usable(record):
            out.append(record)
    return out
