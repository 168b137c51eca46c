"""Why a history write failed, as the reason label of the dropped-flows counter."""

from __future__ import annotations

import sqlite3

from exporter.store import SourceError


class HistoryError(SourceError):
    """A write that did not happen; `reason` is the label of the dropped-flows counter."""

    def __init__(self, reason: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable  # the sink keeps the batch for the next round (bounded)


def classify(exc: BaseException) -> HistoryError:
    """sqlite3's exceptions as a reason a person can act on."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and ("full" in text or "no space" in text):
        return HistoryError("disk_full", f"disk full: {exc}")
    if "locked" in text or "busy" in text:
        return HistoryError("locked", f"database locked by another process: {exc}")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return HistoryError("corrupt", f"database corrupt: {exc}")
    if isinstance(exc, OSError | sqlite3.OperationalError):
        return HistoryError("io_error", f"cannot write: {exc}")
    return HistoryError("error", f"{type(exc).__name__}: {exc}")
