"""CNI error codes (SPEC.md "Error codes") and the exception every layer raises."""

from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# STATUS: the plugin cannot serve ADD right now.
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# 100+ are plugin specific.
INTERNAL = 100
IPAM_EXHAUSTED = 101
ALREADY_EXISTS = 102


class CNIError(Exception):
    """An error the plugin reports as the spec's error JSON on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
