"""Token validation (RFC 8725): forged tokens are 401 and never 500; key rotation keeps old tokens valid
during the overlap; an external OIDC issuer is trusted through its JWKS URL, refetched sparingly."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from parley_common.auth.internal import InternalIdentity, mint_internal_token
from parley_common.auth.keys import generate_private_key_pem, load_signing_keys, public_jwk
from parley_common.testing.net import free_port
from parley_common.testing.processes import ManagedProcess, ProcessManager

from tests.gateway.support import CHAT_BODY, Account, Stack, start_stack, wait_until
from tests.support.db import query
from tests.support.platform import PlatformConfig


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Forger:
    """Makes tokens that look like the gateway's, correct except for one thing."""

    def __init__(self, pem: str, user_id: str) -> None:
        self.key = load_signing_keys(pem)[0]
        self.user_id = user_id

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": "parley",
            "aud": "parley-api",
            "sub": self.user_id,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self, claims: dict[str, Any], *, key: Any = None, kid: str | None = None, typ: str = "at+jwt"
    ) -> str:
        signing = key if key is not None else self.key.private_key
        return jwt.encode(
            claims, signing, algorithm="ES256", headers={"kid": kid or self.key.kid, "typ": typ}
        )

    def valid(self) -> str:
        return self.sign(self.claims())


def forged_tokens(forger: Forger, refresh_token: str) -> dict[str, str]:
    claims = forger.claims()
    valid = forger.valid()
    head, _payload, signature = valid.split(".")
    foreign = load_signing_keys(generate_private_key_pem())[0]
    public_pem = forger.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    alg_none = (
        b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": forger.key.kid}).encode())
        + "."
        + b64(json.dumps(claims).encode())
        + "."
    )
    hs256_with_public_key = (
        b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": forger.key.kid}).encode())
        + "."
        + b64(json.dumps(claims).encode())
    )
    import hashlib
    import hmac

    hs256_with_public_key += "." + b64(
        hmac.new(public_pem, hs256_with_public_key.encode(), hashlib.sha256).digest()
    )
    admin_claims = {**claims, "sub": str(uuid.uuid4()), "role": "admin"}
    tampered = head + "." + b64(json.dumps(admin_claims).encode()) + "." + signature
    internal = mint_internal_token(forger.key, InternalIdentity(user_id=uuid.UUID(forger.user_id)), ttl=60)
    now = int(time.time())
    return {
        "alg none": alg_none,
        "HS256 signed with the public key": hs256_with_public_key,
        "foreign key under our kid": forger.sign(claims, key=foreign.private_key),
        "foreign key under its own kid": forger.sign(claims, key=foreign.private_key, kid=foreign.kid),
        "expired": forger.sign(forger.claims(iat=now - 1000, nbf=now - 1000, exp=now - 60)),
        "not yet valid": forger.sign(forger.claims(nbf=now + 600, exp=now + 1200)),
        "issued in the future": forger.sign(forger.claims(iat=now + 600, exp=now + 1200)),
        "wrong audience": forger.sign(forger.claims(aud="someone-else")),
        "wrong issuer": forger.sign(forger.claims(iss="https://evil.example")),
        "tampered payload": tampered,
        "unknown kid": forger.sign(claims, kid="no-such-kid"),
        "no kid": jwt.encode(claims, forger.key.private_key, algorithm="ES256", headers={"typ": "at+jwt"}),
        "missing exp": forger.sign(forger.claims(exp=None)),
        "missing jti": forger.sign(forger.claims(jti=None)),
        "subject not a user id": forger.sign(forger.claims(sub="admin")),
        "wrong type header": forger.sign(claims, typ="JWT"),
        "internal token as access token": internal,
        "refresh token as access token": refresh_token,
        "oversized": forger.sign({**claims, "pad": "x" * 10_000}),
        "garbage": "a.b.c",
        "not base64": "eyJ!!!.eyJ!!!.sig",
        "empty segments": "..",
    }


@pytest.fixture(scope="module")
def victim(stack: Stack) -> Account:
    return stack.register()


class TestForgedTokens:
    def test_a_genuine_token_works(self, stack: Stack, victim: Account) -> None:
        forger = Forger(stack.config.signing_key_pem, victim.id)
        response = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {forger.valid()}"})
        assert response.status_code == 200
        assert response.json()["id"] == victim.id

    def test_every_forgery_is_401_on_every_kind_of_route(self, stack: Stack, victim: Account) -> None:
        forger = Forger(stack.config.signing_key_pem, victim.id)
        outcomes: dict[str, list[int]] = {}
        for name, token in forged_tokens(forger, victim.refresh).items():
            headers = {"authorization": f"Bearer {token}"}
            outcomes[name] = [
                httpx.get(stack.url + "/v1/me", headers=headers).status_code,
                httpx.post(stack.url + "/v1/chat/completions", json=CHAT_BODY, headers=headers).status_code,
                httpx.get(stack.url + "/v1/conversations", headers=headers).status_code,
                httpx.get(stack.url + "/v1/admin/plans", headers=headers).status_code,
            ]
        assert outcomes == {name: [401, 401, 401, 401] for name in outcomes}

    def test_openai_routes_answer_in_openai_shape_and_the_sdk_raises(self, stack: Stack) -> None:
        import openai

        refused = httpx.post(
            stack.url + "/v1/chat/completions", json=CHAT_BODY, headers={"authorization": "Bearer a.b.c"}
        )
        assert refused.json()["error"]["type"] == "authentication_error"
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key="a.b.c", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_BODY["messages"])  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "header", ["", "Bearer", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b c", "Bearer \u00e9t\u00e9"]
    )
    def test_missing_or_malformed_authorization_is_401(self, stack: Stack, header: str) -> None:
        headers = {"authorization": header.encode("latin-1")} if header else {}
        response = httpx.get(stack.url + "/v1/me", headers=headers)
        assert response.status_code == 401


class TestKeyRotation:
    def test_old_and_new_keys_are_accepted_during_the_overlap(
        self, manager: ProcessManager, platform_config: PlatformConfig
    ) -> None:
        old_pem, new_pem = platform_config.signing_key_pem, generate_private_key_pem()
        old_kid, new_kid = (load_signing_keys(p)[0].kid for p in (old_pem, new_pem))
        stack = start_stack(manager, platform_config, with_chat=False)
        account = stack.register()  # token signed with the old key
        # Deploy 2: the new key signs, the old one stays published until its tokens expire.
        _, overlap = stack.start_gateway("gateway-overlap", PARLEY_JWT_PRIVATE_KEYS=new_pem + "\n" + old_pem)
        kids = [k["kid"] for k in httpx.get(overlap + "/.well-known/jwks.json").json()["keys"]]
        assert kids == [new_kid, old_kid]
        assert httpx.get(overlap + "/v1/me", headers=account.headers).status_code == 200
        fresh = stack.register(url=overlap)
        assert jwt.get_unverified_header(fresh.access)["kid"] == new_kid
        assert httpx.get(overlap + "/v1/me", headers=fresh.headers).status_code == 200
        # Deploy 3, after the old tokens expired: the old key is gone, and so is trust in it.
        _, after = stack.start_gateway("gateway-after", PARLEY_JWT_PRIVATE_KEYS=new_pem)
        assert [k["kid"] for k in httpx.get(after + "/.well-known/jwks.json").json()["keys"]] == [new_kid]
        assert httpx.get(after + "/v1/me", headers=account.headers).status_code == 401
        assert httpx.get(after + "/v1/me", headers=fresh.headers).status_code == 200


ISSUER = "https://login.example.com/"


class Issuer:
    """An external OIDC provider: RSA keys, a JWKS file served over HTTP by a real server process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.unpublished = {"other": rsa.generate_private_key(public_exponent=65537, key_size=2048)}

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.publish()

    def publish(self) -> None:
        entries = []
        for kid, key in self.keys.items():
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            entries.append({**entry, "kid": kid, "use": "sig", "alg": "RS256"})
        # An EC key of the gateway's kind too: the issuer may use both.
        ec = load_signing_keys(generate_private_key_pem())[0]
        entries.append(public_jwk(ec.private_key.public_key()))
        (self.directory / "jwks.json").write_text(json.dumps({"keys": entries}))

    def token(self, kid: str, subject: str | None, *, key_of: str | None = None, **changes: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "parley", "sub": subject, "iat": now, "exp": now + 300, **changes}
        return jwt.encode(
            {k: v for k, v in claims.items() if v is not None},
            self.keys.get(key_of or kid) or self.unpublished[key_of or kid],
            algorithm="RS256",
            headers={"kid": kid},
        )


@pytest.fixture(scope="module")
def oidc(
    manager: ProcessManager, platform_config: PlatformConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Stack, Issuer, ManagedProcess]:
    directory = tmp_path_factory.mktemp("issuer")
    issuer = Issuer(directory)
    issuer.add_key("k1")
    port = free_port()
    server = manager.spawn(
        "issuer",
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
        ],
        ready_url=f"http://127.0.0.1:{port}/jwks.json",
    )
    stack = start_stack(
        manager,
        platform_config,
        with_chat=False,
        PARLEY_OIDC_ISSUER=ISSUER,
        PARLEY_OIDC_JWKS_URL=f"http://127.0.0.1:{port}/jwks.json",
        PARLEY_OIDC_AUDIENCE="parley",
        PARLEY_OIDC_JWKS_COOLDOWN="2",
    )
    return stack, issuer, server


def fetches(server: ManagedProcess) -> int:
    return server.text().count("GET /jwks.json")


class TestExternalIssuer:
    def test_its_tokens_sign_in_an_account_of_its_own(
        self, oidc: tuple[Stack, Issuer, ManagedProcess], database_url: str
    ) -> None:
        stack, issuer, _ = oidc
        sub = f"auth0|{uuid.uuid4().hex}"
        token = issuer.token("k1", sub, email="Someone@Example.com", email_verified=True)
        first = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {token}"})
        assert first.status_code == 200, first.text
        assert first.json()["credential"] == "external"
        assert first.json()["email"] == "someone@example.com"
        assert first.json()["plan"]["name"] == "free"
        again = httpx.get(
            stack.url + "/v1/me", headers={"authorization": f"Bearer {issuer.token('k1', sub)}"}
        )
        assert again.json()["id"] == first.json()["id"]
        [registered] = query(
            database_url,
            "SELECT payload FROM gateway.outbox WHERE event_type = 'user.registered.v1' AND payload->>'user_id' = :u",
            u=first.json()["id"],
        )
        assert registered["payload"]["region"] == "local"  # stamped like a password sign-up's event

    def test_an_unverified_email_never_links_to_an_existing_account(
        self, oidc: tuple[Stack, Issuer, ManagedProcess]
    ) -> None:
        stack, issuer, _ = oidc
        existing = stack.register()
        token = issuer.token("k1", uuid.uuid4().hex, email=existing.email, email_verified=False)
        response = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert response.json()["id"] != existing.id

    def test_bad_external_tokens_are_401(self, oidc: tuple[Stack, Issuer, ManagedProcess]) -> None:
        stack, issuer, _ = oidc
        sub = uuid.uuid4().hex
        now = int(time.time())
        bad = {
            "wrong audience": issuer.token("k1", sub, aud="another-app"),
            "expired": issuer.token("k1", sub, iat=now - 900, exp=now - 600),
            "no subject": issuer.token("k1", None),
            "signed by another key": issuer.token("k1", sub, key_of="other"),
        }
        for name, token in bad.items():
            response = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 401, name

    def test_an_unknown_kid_refetches_at_most_once_per_cooldown_then_finds_a_rotated_key(
        self, oidc: tuple[Stack, Issuer, ManagedProcess]
    ) -> None:
        stack, issuer, server = oidc
        time.sleep(2.1)  # let the cooldown of earlier tests pass
        before = fetches(server)
        for i in range(20):
            token = issuer.token(f"unknown-{i}", "x", key_of="k1")
            assert (
                httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {token}"}).status_code
                == 401
            )
        assert fetches(server) - before <= 1
        issuer.add_key("k2")  # the issuer rotates
        token = issuer.token("k2", uuid.uuid4().hex)
        ok = wait_until(
            lambda: (
                httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {token}"}).status_code
                == 200
            ),
            timeout=10,
            interval=0.5,
            what="rotated issuer key accepted",
        )
        assert ok

    def test_an_account_without_a_password_is_deleted_by_confirming_its_email(
        self, oidc: tuple[Stack, Issuer, ManagedProcess], database_url: str
    ) -> None:
        stack, issuer, _ = oidc
        if len(stack.urls) < 2:
            stack.start_gateway("gateway-oidc-2")
        email = f"leaving-{uuid.uuid4().hex[:10]}@example.com"
        token = issuer.token("k1", f"auth0|{uuid.uuid4().hex}", email=email, email_verified=True)
        headers = {"authorization": f"Bearer {token}"}
        ids = {httpx.get(url + "/v1/me", headers=headers).json()["id"] for url in stack.urls}
        assert len(ids) == 1  # one account, mapped to the subject on both replicas
        [old_id] = ids
        for body in ({"confirm_email": "someone-else@example.com"}, {"password": "no-password-here"}, {}):
            refused = httpx.request("DELETE", stack.url + "/v1/me", json=body, headers=headers)
            assert refused.status_code == 403, refused.text
            assert refused.json()["type"].endswith("/reauthentication_failed")
            assert refused.json()["expected"] == "confirm_email"
        deleted = httpx.request(
            "DELETE", stack.url + "/v1/me", json={"confirm_email": email.upper()}, headers=headers
        )
        assert deleted.status_code == 204, deleted.text
        [event] = query(
            database_url,
            "SELECT payload FROM gateway.outbox WHERE event_type = 'user.deleted.v1' AND payload->>'user_id' = :u",
            u=old_id,
        )
        assert event["payload"]["email"] == email
        assert query(database_url, "SELECT 1 FROM gateway.users WHERE id = :u", u=old_id) == []
        # The issuer still vouches for the person: on every replica, the way a first sign-in does, their
        # token opens a new, empty account, never the deleted one.
        again = {httpx.get(url + "/v1/me", headers=headers).json()["id"] for url in reversed(stack.urls)}
        assert len(again) == 1
        assert again != {old_id}
