"""The agent's policy answers (exporter.policy_api) merged across nodes, for the relay's /api/policy routes.

Every node enforces what should be the same policy set with the same cluster knowledge, so the relay
keeps the agent's answer shape (the CLI reads it unchanged) from a reference and says which nodes differ
from it: no node's answer is picked without naming who gave it and who did not. Pure logic over the
agents' JSON; exporter.relay.service asks the agents.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any


class Refused(Exception):
    """A policy question the relay cannot answer: 400 when the question is bad (every node that
    answered refused it, with the agents' reason), 503 when no node could answer at all."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def policy_set(status: Mapping[str, Any]) -> tuple[frozenset[str], bool]:
    """What a node enforces: its policies (as a set: the order is the agent's listing) and audit mode
    (a node in audit mode enforces nothing, so it does not run the same set)."""
    return frozenset(status.get("policies") or ()), bool(status.get("audit"))


def status(answers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """/api/policy over the nodes that answered (at least one). The top-level fields are those of the
    reference node: the first by name of the nodes running the policy set most nodes run. `consistent`:
    every node that answered runs that set (the caller names the others apart). `nodes` says each
    node's generation (each node counts its own), compile summary (its own pods) and refused change,
    and how its set differs."""
    names = sorted(answers)
    sets = {n: policy_set(answers[n]) for n in names}
    count = Counter(sets.values())
    ref = min(names, key=lambda n: (-count[sets[n]], n))
    ref_policies = sets[ref][0]
    nodes = {}
    for n in names:
        policies, audit = sets[n]
        st = answers[n]
        nodes[n] = {
            "generation": st.get("generation"),
            "applied_at": st.get("applied_at"),
            "audit": audit,
            "summary": st.get("summary", ""),
            "error": st.get("error", ""),
            "differs": sets[n] != sets[ref],
            "missing": sorted(ref_policies - policies),  # the reference runs them, this node does not
            "extra": sorted(policies - ref_policies),
        }
    return {
        **answers[ref],
        "reference": ref,
        "consistent": len(count) == 1,
        "nodes": nodes,
    }


def _canonical(answer: Mapping[str, Any]) -> str:
    return json.dumps(answer, sort_keys=True)


def explain(answers: Mapping[str, Mapping[str, Any]], refusals: Mapping[str, str]) -> dict[str, Any]:
    """/api/policy/explain over the nodes that answered (at least one) and those that refused the
    question (the agent's 400 reason: it does not know src or dst). The top-level fields are the answer
    most nodes gave (ties: the first node's by name), `nodes` the nodes that gave it; `agree` is false
    when any node answered otherwise or refused, and `text` then shows every answer with its nodes.
    `verdicts` has each node's verdict (or `error`)."""
    names = sorted(answers)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_canonical(answers[n]), []).append(n)
    top = min(groups.values(), key=lambda g: (-len(g), g[0]))
    chosen = answers[top[0]]
    verdicts: dict[str, dict[str, Any]] = {
        n: {k: answers[n].get(k) for k in ("allowed", "verdict", "policies", "reason")} for n in names
    }
    verdicts.update({n: {"error": reason} for n, reason in refusals.items()})
    agree = len(groups) == 1 and not refusals
    text = chosen.get("text", "")
    if not agree:
        blocks = [(g, answers[g[0]].get("text", "")) for g in groups.values()]
        blocks += [(sorted(g), f"refused: {reason}") for reason, g in _by_reason(refusals).items()]
        blocks.sort(key=lambda b: (-len(b[0]), b[0][0]))
        said = "; ".join(f"{', '.join(g)}: {_word(answers, refusals, g[0])}" for g, _ in blocks)
        text = f"nodes disagree ({said})\n" + "\n".join(f"[{', '.join(g)}]\n{t}" for g, t in blocks)
    return {
        **chosen,
        "text": text,
        "agree": agree,
        "nodes": top,
        "verdicts": dict(sorted(verdicts.items())),
    }


def _word(answers: Mapping[str, Mapping[str, Any]], refusals: Mapping[str, str], node: str) -> str:
    if node in refusals:
        return "refused"
    return "ALLOWED" if answers[node].get("allowed") else "DENIED"


def _by_reason(refusals: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in sorted(refusals):
        out.setdefault(refusals[n], []).append(n)
    return out


def refusal(refusals: Mapping[str, str]) -> str:
    """The reason for the relay's 400 when every node that answered refused: the agent's reason, or
    each reason with its nodes if they gave different ones."""
    reasons = _by_reason(refusals)
    if len(reasons) == 1:
        return next(iter(reasons))
    return "; ".join(f"{', '.join(nodes)}: {reason}" for reason, nodes in reasons.items())


def whatif(answers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """/api/policy/whatif over the nodes that answered (at least one). Each node replays its own stored
    flows, so `flows_checked` is the sum (a cross-node connection is stored, and counted, on both of
    its nodes); a change several nodes report is one change naming them all (`nodes`). Changes are
    ordered by connection, so the answer does not depend on which node answered first."""
    names = sorted(answers)
    changes: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
    for n in names:
        for c in answers[n].get("changes") or ():
            seen = changes.setdefault(_canonical(c), (c, []))[1]
            if n not in seen:
                seen.append(n)
    merged = sorted(changes.items(), key=lambda kv: (str(kv[1][0].get("connection", "")), kv[0]))
    return {
        "flows_checked": sum(int(answers[n].get("flows_checked") or 0) for n in names),
        # every node read the same body; the first by name says what it proposed
        "proposed": answers[names[0]].get("proposed", []),
        "changes": [{**c, "nodes": nodes} for _, (c, nodes) in merged],
        "nodes": {
            n: {
                "flows_checked": answers[n].get("flows_checked", 0),
                "changes": len(answers[n].get("changes") or ()),
            }
            for n in names
        },
    }
