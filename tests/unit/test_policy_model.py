"""Manifests: what parses, how Kubernetes defaults fill in, and invalid ones rejected naming the field."""

import ipaddress

import pytest

from exporter.policy.errors import PolicyError
from exporter.policy.model import PolicyPort, load_paths, load_policies

HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n"


def one(spec: str) -> object:
    (policy,) = load_policies(HEAD + spec)
    return policy


def test_defaults_as_the_api_server_sets_them():
    p = one("spec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n")
    assert p.policy_types == {"ingress"}
    assert p.ingress[0].ports == (PolicyPort("TCP", 80, None),)
    # Egress joins the defaulted types only when spec.egress is non-empty.
    assert one("spec:\n  podSelector: {}\n  egress: [{}]\n").policy_types == {"ingress", "egress"}
    assert one("spec:\n  podSelector: {}\n  egress: []\n").policy_types == {"ingress"}
    assert one("spec:\n  podSelector: {}\n  policyTypes: [Egress]\n").policy_types == {"egress"}


def test_namespace_defaults_to_the_callers():
    text = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: p}\nspec: {podSelector: {}}\n"
    )
    assert load_policies(text)[0].key == "default/p"
    assert load_policies(text, default_namespace="prod")[0].key == "prod/p"


def test_multi_document_and_list():
    text = (
        HEAD
        + "spec: {podSelector: {}}\n---\n---\n"
        + "apiVersion: v1\nkind: List\nitems:\n- "
        + HEAD.replace("name: p", "name: q").replace("\n", "\n  ")
        + "spec: {podSelector: {}}\n"
    )
    assert [p.key for p in load_policies(text)] == ["a/p", "a/q"]


def test_peer_absent_and_empty_selectors_are_kept_apart():
    p = one(
        "spec:\n  podSelector: {}\n  ingress:\n  - from:\n"
        "    - namespaceSelector: {}\n    - podSelector: {}\n"
    )
    ns_only, pod_only = p.ingress[0].peers
    assert ns_only.pod_selector is None and ns_only.namespace_selector is not None
    assert pod_only.namespace_selector is None and pod_only.pod_selector is not None


def test_ipblock_parsed():
    p = one(
        "spec:\n  podSelector: {}\n  ingress:\n"
        "  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n"
    )
    block = p.ingress[0].peers[0].ip_block
    assert block.contains(ipaddress.ip_address("10.2.3.4"))
    assert not block.contains(ipaddress.ip_address("10.1.3.4"))
    assert not block.contains(ipaddress.ip_address("192.0.2.1"))


def test_directory_of_manifests(tmp_path):
    (tmp_path / "one.yaml").write_text(HEAD + "spec: {podSelector: {}}\n")
    (tmp_path / "two.yml").write_text(HEAD.replace("name: p", "name: q") + "spec: {podSelector: {}}\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert sorted(p.key for p in load_paths([tmp_path])) == ["a/p", "a/q"]
    (tmp_path / "three.yaml").write_text(HEAD + "spec: {podSelector: {}}\n")
    with pytest.raises(PolicyError, match="a/p is also defined in .*one.yaml"):
        load_paths([tmp_path])


INVALID = [
    (
        "spec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 90, endPort: 85}]}]\n",
        "spec.ingress[0].ports[1].endPort: must be >= port (90)",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{ports: [{endPort: 85}]}]\n",
        "spec.ingress[0].ports[0].endPort: requires port",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 85}]}]\n",
        "spec.ingress[0].ports[0].endPort: cannot be used with a named port",
    ),
    (
        "spec:\n  podSelector: {}\n  egress: [{ports: [{port: 70000}]}]\n",
        "spec.egress[0].ports[0].port: must be a port number",
    ),
    (
        "spec:\n  podSelector: {}\n  egress: [{ports: [{port: '80'}]}]\n",
        "spec.egress[0].ports[0].port: '80' is not a valid port name",
    ),
    (
        "spec:\n  podSelector: {}\n  egress: [{ports: [{port: Http_1}]}]\n",
        "spec.egress[0].ports[0].port: 'Http_1' is not a valid",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]\n",
        "spec.ingress[0].ports[0].protocol: must be one of TCP, UDP, SCTP, got 'ICMP'",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelecter: {}}]}]\n",
        "spec.ingress[0].from[0].namespaceSelecter: unknown field",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{from: [{}]}]\n",
        "spec.ingress[0].from[0]: must specify podSelector",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
        "spec.ingress[0].from[0]: ipBlock cannot be combined",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
        "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0/33' is not a valid CIDR",
    ),
    (
        "spec:\n  podSelector: {}\n"
        "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]\n",
        "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 must be a strict subset of cidr 10.0.0.0/8",
    ),
    (
        "spec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {except: [10.0.0.0/16]}}]}]\n",
        "spec.ingress[0].from[0].ipBlock.cidr: required",
    ),
    (
        "spec:\n  podSelector: {matchExpressions: [{key: app, operator: In}]}\n",
        "spec.podSelector.matchExpressions[0].values: must be non-empty when operator is In",
    ),
    (
        "spec:\n  podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}\n",
        "spec.podSelector.matchExpressions[0].values: must be empty when operator is Exists",
    ),
    (
        "spec:\n  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}\n",
        "spec.podSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist",
    ),
    (
        "spec:\n  podSelector: {matchLabels: {version: 1}}\n",
        "spec.podSelector.matchLabels.version: label value must be a string",
    ),
    ("spec:\n  podSelector: {matchLabels: {-bad: x}}\n", "spec.podSelector.matchLabels: label key '-bad'"),
    (
        "spec:\n  podSelector: {}\n  policyTypes: [Ingress, Ingress]\n",
        "spec.policyTypes[1]: duplicate value 'Ingress'",
    ),
    (
        "spec:\n  podSelector: {}\n  policyTypes: [ingress]\n",
        "spec.policyTypes[0]: must be Ingress or Egress",
    ),
    ("spec:\n  ingress: []\n", "spec.podSelector: required"),
    ("spec:\n  podSelector: {}\n  ingres: []\n", "spec.ingres: unknown field"),
    ("spec: []\n", "spec: must be a mapping"),
]


@pytest.mark.parametrize("spec, message", INVALID)
def test_invalid_manifest_names_the_field(spec, message):
    with pytest.raises(PolicyError) as err:
        load_policies(HEAD + spec, source="policies.yaml")
    assert str(err.value).startswith("policies.yaml, document 1 (NetworkPolicy p): ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\n"
            "metadata: {name: p}\nspec: {podSelector: {}}\n",
            "apiVersion: expected networking.k8s.io/v1",
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "kind: expected NetworkPolicy, got 'Pod'"),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {podSelector: {}}\n",
            "metadata: required",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            "metadata: {name: Bad_Name}\nspec: {podSelector: {}}\n",
            "metadata.name: 'Bad_Name'",
        ),
        ("spec: {podSelector: {}\n", "not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_invalid_document(text, message):
    with pytest.raises(PolicyError, match=None) as err:
        load_policies(text, source="f.yaml")
    assert message in str(err.value) and str(err.value).startswith("f.yaml")


def test_error_names_the_document_and_nothing_is_half_loaded():
    good = HEAD + "spec: {podSelector: {}}\n"
    bad = HEAD.replace("name: p", "name: q") + "spec:\n  podSelector: {}\n  egress: [{ports: [{port: 0}]}]\n"
    with pytest.raises(PolicyError) as err:
        load_policies(good + "---\n" + bad, source="set.yaml")
    assert str(err.value).startswith("set.yaml, document 2 (NetworkPolicy q): spec.egress[0].ports[0].port:")
    assert err.value.field == "spec.egress[0].ports[0].port"


def test_same_policy_twice_in_one_file():
    doc = HEAD + "spec: {podSelector: {}}\n"
    with pytest.raises(PolicyError, match="a/p is defined twice"):
        load_policies(doc + "---\n" + doc)
