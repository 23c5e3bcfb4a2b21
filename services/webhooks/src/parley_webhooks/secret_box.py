"""Endpoint signing secrets are stored encrypted, so a copy of the database (a backup, a replica, a leaked
dump) cannot sign webhooks that receivers would trust.

Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) with the keys of
``PARLEY_WEBHOOKS_ENCRYPTION_KEYS``, comma-separated: the first encrypts, every one decrypts. To rotate,
put a new key first and run ``parley-webhooks-migrate`` (the Helm migration Job does at every upgrade):
it re-encrypts every stored secret under the first key, after which the old key can be removed.

Rows written before encryption existed hold the secret itself (``whsec_…``); they are read as they are
until the same command encrypts them, so a rolling upgrade keeps signing.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from parley_common.logs import get_logger
from sqlalchemy import Engine, select, update

from parley_webhooks.models import EndpointSecret
from parley_webhooks.signing import SECRET_PREFIX

log = get_logger(__name__)


class SecretUnreadable(Exception):
    """A stored secret was encrypted with a key that is not (or no longer) configured."""


class SecretBox:
    def __init__(self, keys: str) -> None:
        fernets = []
        for number, key in enumerate((k.strip() for k in keys.split(",") if k.strip()), start=1):
            try:
                fernets.append(Fernet(key))
            except ValueError:
                # Never the key itself in the message: it is a secret.
                raise ValueError(
                    f"PARLEY_WEBHOOKS_ENCRYPTION_KEYS: key {number} is not a Fernet key "
                    '(32 random bytes, url-safe base64; make one with `python -c "from '
                    'cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`)'
                ) from None
        if not fernets:
            raise ValueError("PARLEY_WEBHOOKS_ENCRYPTION_KEYS holds no key")
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)

    def seal(self, secret: str) -> str:
        return self._primary.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if stored.startswith(SECRET_PREFIX):  # written before encryption; sealed by the next migrate
            return stored
        try:
            return self._all.decrypt(stored.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "an endpoint secret was encrypted with a key missing from PARLEY_WEBHOOKS_ENCRYPTION_KEYS"
            ) from None

    def is_current(self, stored: str) -> bool:
        """Whether ``stored`` is encrypted with the first key (nothing to re-encrypt)."""
        if stored.startswith(SECRET_PREFIX):
            return False
        try:
            self._primary.decrypt(stored.encode())
        except InvalidToken:
            return False
        return True


def reseal_stored_secrets(engine: Engine, box: SecretBox) -> int:
    """Encrypt every stored secret under the first key (plain ones included); returns how many changed.

    One transaction with the rows locked, so an endpoint's secret is never read half-way through.
    """
    changed = 0
    with engine.begin() as conn:
        rows = conn.execute(select(EndpointSecret.id, EndpointSecret.secret).with_for_update()).all()
        for row_id, stored in rows:
            if box.is_current(stored):
                continue
            conn.execute(
                update(EndpointSecret)
                .where(EndpointSecret.id == row_id)
                .values(secret=box.seal(box.open(stored)))
            )
            changed += 1
    if changed:
        log.info("webhooks.secrets_resealed", count=changed)
    return changed
