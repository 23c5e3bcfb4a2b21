"""Committed event schemas are the contract: a change within a version must be additive, and committed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from parley_common.events import EVENT_TYPES, TokensConsumedV1, event_json_schema, parse_event
from parley_common.events.compat import breaking_changes
from pydantic import Field

SCHEMAS = Path(__file__).resolve().parents[2] / "libs" / "common" / "schemas" / "events"


def committed(type_name: str) -> dict[str, Any]:
    path = SCHEMAS / f"{type_name}.json"
    assert path.exists(), f"{path.name} is not committed: run `make schemas`"
    return dict(json.loads(path.read_text()))


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
class TestCommittedSchemas:
    def test_type_names_carry_a_version(self, type_name: str) -> None:
        assert re.fullmatch(r"[a-z_]+\.[a-z_]+\.v[1-9][0-9]*", type_name)

    def test_current_schema_is_compatible_with_the_committed_one(self, type_name: str) -> None:
        problems = breaking_changes(committed(type_name), event_json_schema(EVENT_TYPES[type_name]))
        assert problems == [], f"{type_name} changed incompatibly ({problems}); add a new version instead"

    def test_committed_schema_is_up_to_date(self, type_name: str) -> None:
        assert committed(type_name) == json.loads(json.dumps(event_json_schema(EVENT_TYPES[type_name]))), (
            "the schema changed (compatibly): run `make schemas` and commit the result"
        )


def test_no_committed_schema_lost_its_type() -> None:
    assert sorted(p.stem for p in SCHEMAS.glob("*.json")) == sorted(EVENT_TYPES)


class TestBreakingChangeDetection:
    """The checker the snapshot test relies on must catch the changes it exists for."""

    def test_a_retyped_field_is_breaking(self) -> None:
        class Retyped(TokensConsumedV1):
            prompt_tokens: str  # type: ignore[assignment]

        assert breaking_changes(
            committed(TokensConsumedV1.model_fields["type"].default), event_json_schema(Retyped)
        ) == ["property 'prompt_tokens' changed type or constraints"]

    def test_a_removed_field_is_breaking(self) -> None:
        old = committed("usage.tokens_consumed.v1")
        new = json.loads(json.dumps(old))
        del new["properties"]["model"]
        new["required"].remove("model")
        assert breaking_changes(old, new) == ["property 'model' was removed"]

    def test_an_added_optional_field_is_not(self) -> None:
        class Added(TokensConsumedV1):
            cost_usd_micros: int | None = Field(None, description="new, optional")

        assert breaking_changes(committed("usage.tokens_consumed.v1"), event_json_schema(Added)) == []


class TestParsing:
    def test_round_trip_by_type_and_unknown_fields_ignored(self) -> None:
        event = TokensConsumedV1(
            source="chat",
            user_id="8f2d4c1e-0000-4000-8000-000000000001",
            request_id="r",
            model="m",
            provider="p",
            prompt_tokens=1,
            completion_tokens=2,
        )
        data = event.model_dump(mode="json") | {"added_in_a_later_release": True}
        parsed = parse_event(data)
        assert isinstance(parsed, TokensConsumedV1)
        assert parsed == event

    def test_events_are_immutable(self) -> None:
        event = TokensConsumedV1(
            source="chat",
            user_id="8f2d4c1e-0000-4000-8000-000000000001",
            request_id="r",
            model="m",
            provider="p",
            prompt_tokens=1,
            completion_tokens=2,
        )
        with pytest.raises(Exception, match="frozen"):
            event.prompt_tokens = 5  # type: ignore[misc]
