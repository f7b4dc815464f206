"""NetworkPolicies evaluated: whether the policies let one endpoint reach another on a port.

An endpoint is a pod (its namespace and labels) or an address outside the cluster (an IP).
Policies apply the way Kubernetes applies them: a pod that no policy of a direction selects is
open in that direction; one that some policy selects accepts only what a rule of one of them
admits; a connection needs the source's egress and the target's ingress.
"""

from __future__ import annotations

import ipaddress
from typing import Any


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    assert set(selector) <= {"matchLabels", "matchExpressions"}, f"unexpected selector {selector}"
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {"In": present and labels.get(key) in values, "NotIn": labels.get(key) not in values,
                "Exists": present, "DoesNotExist": not present}[operator]:
            return False
    return True


class Endpoint:
    def __init__(self, name: str, namespace: str, labels: dict[str, str] | None = None, ip: str = "") -> None:
        self.name, self.namespace, self.labels, self.ip = name, namespace, labels or {}, ip


def _peer_matches(peer: dict[str, Any], other: Endpoint, namespace: str) -> bool:
    if "ipBlock" in peer:
        if not other.ip:
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", []))
    if other.ip:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif other.namespace != namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _allowed(policies: list[dict[str, Any]], pod: Endpoint, other: Endpoint, port: int, direction: str) -> bool:
    """Whether the policies let ``pod`` send (Egress) to or receive (Ingress) from ``other`` on ``port``."""
    relevant = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                and direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.labels)]
    if not relevant:
        return True
    field, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in relevant:
        for rule in policy["spec"].get(field, []):
            # A rule without peers admits every peer (pods anywhere, any address) on its ports.
            if (not rule.get(peers) or any(_peer_matches(peer, other, pod.namespace) for peer in rule[peers])) and (
                    "ports" not in rule or any(p["port"] == port for p in rule["ports"])):
                return True
    return False


def reachable(policies: list[dict[str, Any]], source: Endpoint, target: Endpoint, port: int) -> bool:
    egress = _allowed(policies, source, target, port, "Egress") if not source.ip else True
    ingress = _allowed(policies, target, source, port, "Ingress") if not target.ip else True
    return egress and ingress
