# -*- test-case-name: tests.test_vault -*-
"""
Sealing provider keys at rest: AES-256-GCM from the C{cryptography} package
(a maintained library, never hand-written crypto), under the operator's
C{secrets.encryption_key}.

A sealed blob is C{b"\\x01"} (the format version), a 12-byte random nonce,
then the ciphertext and its 16-byte tag.  The associated data binds a blob to
its row (L{provider_key_aad}: the proxy key's id and the provider), so a
ciphertext copied to another row or provider does not open.

Each box has a L{SecretBox.fingerprint}, a short digest of its key that is safe
to store and log: stored rows carry the fingerprint of the key that sealed
them, so a wrong key is one clear error at startup, and during a rotation the
right one of several keys is chosen without trying each.

The configuration gives the keys (L{configured_box}, L{previous_boxes});
L{VaultError} messages never hold a key or a plaintext.
"""

from __future__ import annotations

import hashlib
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from majordomo.config import SecretsConfig
from majordomo.config_checks import key_list

_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_FINGERPRINT_CONTEXT = b"majordomo-vault-fingerprint\0"
_PROVIDER_KEY_CONTEXT = b"majordomo proxy key provider\0"


class VaultError(Exception):
    """A key is malformed or a sealed secret cannot be opened (one line, no secret in it)."""


class SecretBox:
    """AES-256-GCM with one 256-bit key, given as 64 hexadecimal characters."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise VaultError("an encryption key must be 32 bytes")
        self._aead = AESGCM(key)
        self.fingerprint: str = hashlib.sha256(_FINGERPRINT_CONTEXT + key).hexdigest()[:16]

    @classmethod
    def from_hex(cls, text: str) -> SecretBox:
        """The box of a 64-hex-character key, or a L{VaultError} that does not show it."""
        if not isinstance(text, str) or not _HEX_KEY.fullmatch(text):
            raise VaultError("secrets.encryption_key must be 64 hexadecimal characters (32 bytes)")
        return cls(bytes.fromhex(text))

    def __repr__(self) -> str:
        return f"<SecretBox {self.fingerprint}>"

    def seal(self, plaintext: str, aad: bytes) -> bytes:
        """C{plaintext} encrypted under a fresh random nonce, bound to C{aad}."""
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad)

    def open(self, blob: bytes | memoryview, aad: bytes) -> str:
        """
        The plaintext sealed in C{blob} with this key and C{aad}; a
        L{VaultError} when the key is another, the blob was changed, or it
        belongs to another row.
        """
        blob = bytes(blob)  # PostgreSQL's bytea arrives as a memoryview
        if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES or blob[:1] != _VERSION:
            raise VaultError("a sealed secret is not in a format this gateway knows")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            plaintext = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise VaultError(
                f"a sealed secret does not open with encryption key {self.fingerprint} "
                "(another key, altered, or moved from another row)"
            ) from None
        return plaintext.decode("utf-8")


def provider_key_aad(proxy_key_id: str, provider: str) -> bytes:
    """The associated data of a proxy key's provider key: its row, so it cannot be moved."""
    return _PROVIDER_KEY_CONTEXT + proxy_key_id.encode("ascii") + b"\0" + provider.encode("ascii")


def configured_box(secrets: SecretsConfig) -> SecretBox | None:
    """The box of C{secrets.encryption_key}, or None when proxy keys are not enabled."""
    if not secrets.encryption_key:
        return None
    return SecretBox.from_hex(secrets.encryption_key)


def previous_boxes(secrets: SecretsConfig) -> list[SecretBox]:
    """The boxes of C{secrets.previous_encryption_keys} (keys a rotation is moving away from)."""
    boxes = []
    for text in key_list(secrets.previous_encryption_keys):
        try:
            boxes.append(SecretBox.from_hex(text))
        except VaultError:
            raise VaultError(
                "secrets.previous_encryption_keys must be 64 hexadecimal characters "
                "(32 bytes) each, separated by commas"
            ) from None
    return boxes
