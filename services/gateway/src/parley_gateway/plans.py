"""Plans as the hot path sees them: one frozen object per (plan, user overrides), built from the tables.

The tables are the truth (``Plan`` rows, ``User.plan_overrides``); a replica keeps these objects in memory
and rebuilds them when Redis says a plan or a user changed (see :mod:`parley_gateway.directory`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from parley_common.auth.internal import PlanClaims
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parley_gateway.models import Plan

CachePolicy = Literal["off", "exact", "semantic"]


@dataclass(frozen=True, slots=True)
class EffectivePlan:
    """A plan with one user's overrides applied. ``None`` limits are unlimited."""

    name: str
    description: str
    allowed_models: tuple[str, ...]
    default_model: str | None
    model_routes: dict[str, str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_streams: int | None
    daily_token_quota: int | None
    monthly_token_quota: int | None
    max_output_tokens: int
    cache: str
    rag_max_documents: int | None  # 0: no retrieval in the plan
    rag_max_document_bytes: int

    @classmethod
    def from_row(cls, row: Plan) -> EffectivePlan:
        return cls(
            name=row.name,
            description=row.description,
            allowed_models=tuple(row.allowed_models or ()),
            default_model=row.default_model,
            model_routes=dict(row.model_routes or {}),
            requests_per_minute=row.requests_per_minute,
            tokens_per_minute=row.tokens_per_minute,
            concurrent_streams=row.concurrent_streams,
            daily_token_quota=row.daily_token_quota,
            monthly_token_quota=row.monthly_token_quota,
            max_output_tokens=row.max_output_tokens,
            cache=row.cache,
            rag_max_documents=row.rag_max_documents,
            rag_max_document_bytes=row.rag_max_document_bytes,
        )

    def with_overrides(self, overrides: dict[str, Any]) -> EffectivePlan:
        if not overrides:
            return self
        known = {f.name for f in fields(self)} - {"name", "description"}
        changes = {k: (tuple(v) if k == "allowed_models" else v) for k, v in overrides.items() if k in known}
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def has_quota(self) -> bool:
        return self.daily_token_quota is not None or self.monthly_token_quota is not None

    def claims(self) -> PlanClaims:
        return PlanClaims(
            name=self.name,
            default_model=self.default_model,
            allowed_models=list(self.allowed_models),
            model_routes=self.model_routes,
            cache=self.cache,  # type: ignore[arg-type]  # checked by the table's constraint
            daily_token_quota=self.daily_token_quota,
            monthly_token_quota=self.monthly_token_quota,
            rag_max_documents=self.rag_max_documents,
            rag_max_document_bytes=self.rag_max_document_bytes,
        )

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "allowed_models": list(self.allowed_models),
            "default_model": self.default_model,
            "model_routes": self.model_routes,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "concurrent_streams": self.concurrent_streams,
            "daily_token_quota": self.daily_token_quota,
            "monthly_token_quota": self.monthly_token_quota,
            "max_output_tokens": self.max_output_tokens,
            "cache": self.cache,
            "rag_max_documents": self.rag_max_documents,
            "rag_max_document_bytes": self.rag_max_document_bytes,
        }

    def fingerprint(self) -> str:
        return json.dumps(self.public(), sort_keys=True)


Limit = int | None

# The request ring stores one timestamp per allowed request in Redis; this bounds its size (see limits).
MAX_REQUESTS_PER_WINDOW = 100_000


class PlanFields(BaseModel):
    """The settable fields of a plan (admin API); also the shape of a user's overrides."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, max_length=500)
    allowed_models: list[str] | None = Field(None, max_length=200, description="Empty: every model")
    default_model: str | None = Field(None, max_length=200)
    model_routes: dict[str, str] | None = None
    requests_per_minute: Limit = Field(None, ge=1, le=MAX_REQUESTS_PER_WINDOW)
    tokens_per_minute: Limit = Field(None, ge=1)
    concurrent_streams: Limit = Field(None, ge=1, le=100_000)
    daily_token_quota: Limit = Field(None, ge=0)
    monthly_token_quota: Limit = Field(None, ge=0)
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    cache: CachePolicy | None = None
    rag_max_documents: Limit = Field(
        None, ge=0, le=1_000_000, description="Documents kept for retrieval; 0: no retrieval; null: unlimited"
    )
    rag_max_document_bytes: int | None = Field(
        None, ge=1, le=10_000_000, description="Largest document accepted, in UTF-8 bytes"
    )

    @field_validator("allowed_models")
    @classmethod
    def _short_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not 0 < len(m) <= 200 for m in value):
            raise ValueError("model names are 1 to 200 characters")
        return value


# Limits that always have a figure: an override may change them, never make them unlimited (``null``).
NEVER_UNLIMITED = ("max_output_tokens", "rag_max_document_bytes")


class PlanOverrides(PlanFields):
    """Per-user exceptions: only the keys sent are stored; ``null`` makes a limit unlimited."""

    @model_validator(mode="after")
    def _bounded(self) -> PlanOverrides:
        for name in NEVER_UNLIMITED:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self
