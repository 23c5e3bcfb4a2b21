"""Render every service's settings as the README's table (``make settings-table`` rewrites it in place).

Services register their Settings class under the ``parley.settings`` entry point group; a test fails when
the README's table differs from what this script renders, so the table cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def render() -> str:
    rows: dict[str, dict[str, Any]] = {}
    for ep in sorted(entry_points(group="parley.settings"), key=lambda e: e.name):
        cls = ep.load()
        for name, field in cls.model_fields.items():
            row = rows.setdefault(name, {"services": [], "field": field, "defaults": {}})
            row["services"].append(ep.name)
            row["defaults"][ep.name] = _default(field)
    lines = ["| Variable | Default | Services | Meaning |", "|---|---|---|---|"]
    for name in sorted(rows):
        field: FieldInfo = rows[name]["field"]
        secret = " (secret)" if field.annotation is not None and "SecretStr" in repr(field.annotation) else ""
        description = (field.description or "").replace("|", "\\|") + secret
        services = ", ".join(rows[name]["services"])
        defaults: dict[str, str] = rows[name]["defaults"]
        default = (
            next(iter(defaults.values()))
            if len(set(defaults.values())) == 1
            else ", ".join(f"{value} ({service})" for service, value in defaults.items())
        )
        lines.append(f"| `PARLEY_{name.upper()}` | {default} | {services} | {description} |")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    return pattern.sub(lambda _: f"{START}\n{render()}\n{END}", text)


def main() -> int:
    text = README.read_text()
    if START not in text:
        print("README.md has no settings markers", file=sys.stderr)
        return 1
    README.write_text(rewrite(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
