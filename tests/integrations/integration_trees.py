"""Helpers to look at trace trees in integration tests."""

from __future__ import annotations


def shape(node: dict) -> list:
    """``[name[index], [children...]]`` all the way down."""
    label = f"{node['name']}[{node['index']}]" if node["index"] is not None else node["name"]
    return [label, [shape(ch) for ch in node["children"]]]


def names(node: dict) -> list[str]:
    return [node["name"]] + [n for ch in node["children"] for n in names(ch)]


def find(nodes: list[dict], name: str) -> list[dict]:
    out = []
    for n in nodes:
        if n["name"] == name:
            out.append(n)
        out.extend(find(n["children"], name))
    return out


def marks(nodes: list[dict], name: str) -> list[float]:
    return [m["value"] for n in nodes for m in n["marks"] if m["name"] == name] + \
        [v for n in nodes for v in marks(n["children"], name)]
