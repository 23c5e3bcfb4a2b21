"""ES256 signing keys and their public JWK form.

Keys are configured as PEM text (one or more ``EC PRIVATE KEY``/``PRIVATE KEY`` blocks); the first signs,
the others stay published so tokens they signed keep verifying until they expire (rotation with
overlap). The ``kid`` is the RFC 7638 thumbprint of the public key, so it never needs configuring.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK (``kty``, ``crv``, ``x``, ``y``, ``kid``, ``alg``, ``use``)."""
    numbers = public_key.public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    thumbprint = _b64url(
        hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    )
    return {**jwk, "kid": thumbprint, "alg": "ES256", "use": "sig"}


@dataclass(frozen=True)
class SigningKey:
    """A private P-256 key with its ``kid``."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.private_key.public_key())


def load_signing_keys(pem_text: str) -> list[SigningKey]:
    """Every P-256 private key in ``pem_text``, in order (the first one signs)."""
    keys: list[SigningKey] = []
    for match in _PEM_BLOCK.finditer(pem_text):
        key = serialization.load_pem_private_key(match.group(0).encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("signing keys must be EC P-256 (ES256)")
        keys.append(SigningKey(kid=public_jwk(key.public_key())["kid"], private_key=key))
    if not keys:
        raise ValueError("no private key found in the configured PEM text")
    return keys


def generate_private_key_pem() -> str:
    """A new P-256 private key as PKCS#8 PEM (``make run`` creates the development key with it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def jwks_document(keys: list[SigningKey]) -> dict[str, Any]:
    """The JWKS published at ``/.well-known/jwks.json``."""
    return {"keys": [key.public_jwk for key in keys]}
