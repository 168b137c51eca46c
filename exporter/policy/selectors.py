"""Kubernetes label selectors (metav1.LabelSelector), parsed and matched exactly as Kubernetes does.

A selector is matchLabels AND every matchExpression. The empty selector `{}` matches everything; whether
an *absent* selector means "everything" or "not this criterion" depends on where it sits, so callers keep
`None` for absent and decide (see engine.py for the peer rules).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from exporter.policy.errors import PolicyError

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_label_key(key: object, path: str) -> str:
    """A qualified name: optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    if not isinstance(key, str) or not key:
        raise PolicyError(path, f"label key must be a non-empty string, got {key!r}")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise PolicyError(path, f"label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        raise PolicyError(
            path, f"label key {key!r}: name must be 1-63 characters, alphanumeric at both ends, '-_.' inside"
        )
    return key


def check_label_value(value: object, path: str) -> str:
    if not isinstance(value, str):
        # YAML turns `version: 1` or `on: true` into numbers and booleans; Kubernetes wants strings.
        raise PolicyError(path, f"label value must be a string, got {value!r} (quote it in YAML)")
    if len(value) > 63 or not _NAME.match(value):
        raise PolicyError(
            path, f"label value {value!r}: at most 63 characters, alphanumeric at both ends, '-_.' inside"
        )
    return value


@dataclass(frozen=True)
class Requirement:
    """One matchExpression: `key operator values`."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":  # an absent key is "not in" any set
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        vals = ",".join(sorted(self.values))
        return {
            "In": f"{self.key} in ({vals})",
            "NotIn": f"{self.key} notin ({vals})",
            "Exists": self.key,
            "DoesNotExist": f"!{self.key}",
        }[self.operator]


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.expressions
        )

    def __str__(self) -> str:
        """kubectl's rendering (`app=web,tier in (a,b)`), `<all>` for the empty selector."""
        parts = [f"{k}={v}" for k, v in self.match_labels] + [str(r) for r in self.expressions]
        return ",".join(parts) if parts else "<all>"


def selector(match_labels: Mapping[str, str] | None = None, *expressions: Requirement) -> LabelSelector:
    """Build a selector in code (tests, agent); manifests go through parse_selector."""
    return LabelSelector(tuple(sorted((match_labels or {}).items())), tuple(expressions))


def parse_selector(raw: object, path: str) -> LabelSelector:
    """metav1.LabelSelector from its YAML/JSON form; `null` is the empty selector, as in Kubernetes."""
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, dict):
        raise PolicyError(path, f"must be a label selector (a mapping), got {type(raw).__name__}")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise PolicyError(
            f"{path}.{sorted(unknown)[0]}", "unknown field (expected matchLabels, matchExpressions)"
        )
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(f"{path}.matchLabels", "must be a mapping of label key to value")
    match_labels = tuple(
        sorted(
            (check_label_key(k, f"{path}.matchLabels"), check_label_value(v, f"{path}.matchLabels.{k}"))
            for k, v in labels.items()
        )
    )
    exprs = raw.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise PolicyError(f"{path}.matchExpressions", "must be a list")
    return LabelSelector(
        match_labels, tuple(_requirement(e, f"{path}.matchExpressions[{i}]") for i, e in enumerate(exprs))
    )


def _requirement(raw: object, path: str) -> Requirement:
    if not isinstance(raw, dict):
        raise PolicyError(path, "must be a mapping with key, operator and values")
    unknown = set(raw) - {"key", "operator", "values"}
    if unknown:
        raise PolicyError(f"{path}.{sorted(unknown)[0]}", "unknown field (expected key, operator, values)")
    key = check_label_key(raw.get("key"), f"{path}.key")
    op = raw.get("operator")
    if op not in OPERATORS:
        raise PolicyError(f"{path}.operator", f"must be one of {', '.join(OPERATORS)}, got {op!r}")
    values = raw.get("values") or []
    if not isinstance(values, list):
        raise PolicyError(f"{path}.values", "must be a list of strings")
    checked = [check_label_value(v, f"{path}.values[{i}]") for i, v in enumerate(values)]
    if op in ("In", "NotIn") and not checked:
        raise PolicyError(f"{path}.values", f"must be non-empty when operator is {op}")
    if op in ("Exists", "DoesNotExist") and checked:
        raise PolicyError(f"{path}.values", f"must be empty when operator is {op}")
    return Requirement(key, op, frozenset(checked))
