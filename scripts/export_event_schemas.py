"""Write every event type's JSON Schema to libs/common/schemas/events/<type>.json (``make schemas``)."""

from __future__ import annotations

import json
from pathlib import Path

from parley_common.events import EVENT_TYPES, event_json_schema

OUT = Path(__file__).resolve().parent.parent / "libs" / "common" / "schemas" / "events"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for type_name, cls in sorted(EVENT_TYPES.items()):
        path = OUT / f"{type_name}.json"
        path.write_text(json.dumps(event_json_schema(cls), indent=2, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(OUT.parent.parent.parent.parent)}")


if __name__ == "__main__":
    main()
