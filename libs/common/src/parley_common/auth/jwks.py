"""Public keys by ``kid``, from a JWKS URL (cached) or a static document.

An unknown ``kid`` triggers at most one refetch per cooldown, so a flood of forged tokens with random
``kid`` values cannot turn into a flood of requests to the key server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import httpx
import jwt

from parley_common.logs import get_logger

log = get_logger("parley.jwks")


class JWKSUnavailable(Exception):
    """The key set could not be fetched."""


class KeySet:
    """Keys by ``kid``; ``get`` refetches (rate-limited) when a ``kid`` is unknown."""

    def __init__(
        self,
        *,
        url: str | None = None,
        document: dict[str, Any] | str | None = None,
        cooldown: float = 30.0,
        max_age: float = 600.0,
        timeout: float = 3.0,
        algorithms: Iterable[str] = ("ES256",),
    ) -> None:
        if url is None and document is None:
            raise ValueError("a key set needs a URL or a document")
        self.url = url
        self.algorithms = tuple(algorithms)
        self._algs: dict[str, str] = {}
        self.cooldown = cooldown
        self.max_age = max_age
        self.timeout = timeout
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        if document is not None:
            self._load(json.loads(document) if isinstance(document, str) else document)
            self._fetched_at = float("inf")  # static: never refetch

    def _algorithm(self, entry: dict[str, Any]) -> str | None:
        """The algorithm a JWK may verify, among those accepted; None to skip the key."""
        if entry.get("use", "sig") != "sig":
            return None
        if entry.get("kty") == "EC" and entry.get("crv") == "P-256" and "ES256" in self.algorithms:
            return "ES256"
        if entry.get("kty") == "RSA":
            rsa = [a for a in self.algorithms if a[:2] in ("RS", "PS")]
            declared = entry.get("alg")
            if declared in rsa:
                return str(declared)
            return rsa[0] if rsa and declared is None else None
        return None

    def _load(self, document: dict[str, Any]) -> None:
        keys: dict[str, Any] = {}
        algs: dict[str, str] = {}
        for entry in document.get("keys", []):
            kid = entry.get("kid")
            algorithm = self._algorithm(entry) if kid else None
            if algorithm is None:
                continue
            try:
                keys[kid] = jwt.PyJWK(entry, algorithm=algorithm).key
            except jwt.PyJWTError:
                log.warning("jwks.key_skipped", kid=kid)
                continue
            algs[kid] = algorithm
        self._keys, self._algs = keys, algs

    async def _refresh(self, force: bool) -> None:
        if self.url is None:
            return
        now = time.monotonic()
        if now - self._fetched_at < (self.cooldown if force else self.max_age):
            return
        async with self._lock:
            if time.monotonic() - self._fetched_at < (self.cooldown if force else self.max_age):
                return
            self._fetched_at = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                    self._load(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("jwks.fetch_failed", url=self.url, error=type(exc).__name__)
                if not self._keys:
                    raise JWKSUnavailable(str(self.url)) from exc

    async def get(self, kid: str) -> Any | None:
        """The public key for ``kid``, or None when the key set does not have it."""
        await self._refresh(force=False)
        key = self._keys.get(kid)
        if key is None:
            await self._refresh(force=True)
            key = self._keys.get(kid)
        return key

    async def get_with_algorithm(self, kid: str) -> tuple[Any, str] | None:
        """The public key for ``kid`` and the one algorithm it verifies, or None."""
        key = await self.get(kid)
        return None if key is None else (key, self._algs[kid])
