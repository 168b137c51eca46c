"""Label selectors as Kubernetes matches them."""

import pytest

from exporter.policy.selectors import LabelSelector, Requirement, parse_selector, selector

WEB = {"app": "web", "tier": "front"}
DB = {"app": "db"}
NONE: dict[str, str] = {}


@pytest.mark.parametrize(
    "raw, web, db, none",
    [
        ({}, True, True, True),  # empty selects everything
        (None, True, True, True),  # `podSelector: ~` is the empty selector too
        ({"matchLabels": {"app": "web"}}, True, False, False),
        ({"matchLabels": {"app": "web", "tier": "back"}}, False, False, False),  # labels AND
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
            True,
            True,
            False,
        ),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False, True, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True, False, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False, True, True),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}],
            },
            False,
            False,
            False,
        ),
    ],
)
def test_matches(raw, web, db, none):
    sel = parse_selector(raw, "sel")
    assert (sel.matches(WEB), sel.matches(DB), sel.matches(NONE)) == (web, db, none)


def test_rendering_like_kubectl():
    sel = selector(
        {"app": "web"}, Requirement("tier", "In", frozenset({"b", "a"})), Requirement("x", "DoesNotExist")
    )
    assert str(sel) == "app=web,tier in (a,b),!x"
    assert str(LabelSelector()) == "<all>"


def test_prefixed_keys():
    sel = parse_selector({"matchLabels": {"kubernetes.io/metadata.name": "a"}}, "sel")
    assert sel.matches({"kubernetes.io/metadata.name": "a"}) and not sel.matches({"name": "a"})
