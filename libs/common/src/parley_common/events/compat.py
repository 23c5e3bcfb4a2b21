"""Is a new event schema a compatible successor of the committed one?

Schemas describe what producers emit (serialization mode, defaults counted as present). Within one
version a change is compatible when every consumer written against the old schema still reads the new
events: properties may be added, never removed, retyped or made optional. Anything else needs a new type
(``….v2``).
"""

from __future__ import annotations

from typing import Any

# Keys that document a schema without changing what validates against it.
_ANNOTATIONS = frozenset({"description", "title", "examples", "default", "$id", "$comment"})


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in _ANNOTATIONS}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable reasons ``new`` breaks consumers of ``old``; empty when it is additive."""
    problems: list[str] = []
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    old_required = set(old.get("required", []))
    new_required = set(new.get("required", []))
    for name, old_schema in old_props.items():
        if name not in new_props:
            problems.append(f"property {name!r} was removed")
            continue
        if _strip(old_schema) != _strip(new_props[name]):
            problems.append(f"property {name!r} changed type or constraints")
        if name in old_required and name not in new_required:
            problems.append(f"property {name!r} is no longer always present")
    if _strip(old.get("$defs", {})) != _strip(
        {k: v for k, v in new.get("$defs", {}).items() if k in old.get("$defs", {})}
    ):
        problems.append("a shared definition ($defs) changed")
    return problems
