"""
The vault (majordomo/vault.py): AES-256-GCM sealing of provider keys, bound to
their row, and the C{secrets} configuration that gives its keys.  No message
ever holds a key or a plaintext.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.trial.unittest import SynchronousTestCase

from majordomo.config import ConfigError, SecretsConfig, load_config
from majordomo.vault import (
    SecretBox,
    VaultError,
    configured_box,
    previous_boxes,
    provider_key_aad,
)

KEY_A = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY_B = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
PLAINTEXT = "sk-proj-MARKER-vault-plaintext-0123456789"
ROW = "7d2f6f0e-5c1b-4f1e-9a57-2f6b3d1c9e01"
OTHER_ROW = "0b3e2b7a-8e0f-4c53-b0c1-5a3f6f4d2e10"


class SecretBoxTests(SynchronousTestCase):
    """Sealing and opening, and every way a blob must refuse to open."""

    def setUp(self) -> None:
        self.box = SecretBox.from_hex(KEY_A)
        self.aad = provider_key_aad(ROW, "openai")

    def assertClean(self, error: Exception) -> None:
        """The message is one line and holds neither key nor plaintext."""
        text = str(error)
        self.assertNotIn("\n", text)
        for secret in (KEY_A, KEY_A.upper(), KEY_B, PLAINTEXT, PLAINTEXT[:12]):
            self.assertNotIn(secret, text)
            self.assertNotIn(secret, repr(error))

    def test_round_trip(self) -> None:
        """A sealed plaintext opens to itself (also non-ASCII, empty, and from a memoryview)."""
        for plaintext in (PLAINTEXT, "", "clé-ünïcode-🔑", "x" * 10_000):
            blob = self.box.seal(plaintext, self.aad)
            self.assertEqual(self.box.open(blob, self.aad), plaintext)
            self.assertEqual(self.box.open(memoryview(blob), self.aad), plaintext)
        # The same key written in capitals is the same key.
        self.assertEqual(SecretBox.from_hex(KEY_A.upper()).open(blob, self.aad), "x" * 10_000)

    def test_format_is_aes_256_gcm(self) -> None:
        """
        A blob is version 1, a 12-byte nonce, then AES-256-GCM ciphertext and
        tag, as the cryptography package's AESGCM reads it: no plaintext in it.
        """
        blob = self.box.seal(PLAINTEXT, self.aad)
        self.assertEqual(blob[:1], b"\x01")
        self.assertEqual(len(blob), 1 + 12 + len(PLAINTEXT.encode()) + 16)
        self.assertNotIn(PLAINTEXT.encode(), blob)
        plain = AESGCM(bytes.fromhex(KEY_A)).decrypt(blob[1:13], blob[13:], self.aad)
        self.assertEqual(plain.decode(), PLAINTEXT)

    def test_nonce_unique(self) -> None:
        """Every seal draws a new nonce: the same plaintext never seals to the same bytes."""
        blobs = [self.box.seal(PLAINTEXT, self.aad) for _ in range(2000)]
        self.assertEqual(len({b[1:13] for b in blobs}), len(blobs))
        self.assertEqual(len(set(blobs)), len(blobs))

    def test_wrong_key(self) -> None:
        """Another key does not open a blob: a VaultError naming its fingerprint, not the key."""
        blob = self.box.seal(PLAINTEXT, self.aad)
        other = SecretBox.from_hex(KEY_B)
        with self.assertRaises(VaultError) as caught:
            other.open(blob, self.aad)
        self.assertIn(other.fingerprint, str(caught.exception))
        self.assertClean(caught.exception)

    def test_flipped_bit(self) -> None:
        """Any single flipped bit (nonce, ciphertext or tag) makes the blob refuse to open."""
        blob = self.box.seal(PLAINTEXT, self.aad)
        for index in range(len(blob)):
            for bit in (0x01, 0x80):
                altered = bytearray(blob)
                altered[index] ^= bit
                with self.assertRaises(VaultError) as caught:
                    self.box.open(bytes(altered), self.aad)
                self.assertClean(caught.exception)

    def test_truncated_or_unknown_format(self) -> None:
        """Short blobs, an empty one and an unknown version are refused, not guessed at."""
        blob = self.box.seal(PLAINTEXT, self.aad)
        for bad in (b"", blob[:1], blob[:28], b"\x02" + blob[1:], blob[:-1]):
            with self.assertRaises(VaultError) as caught:
                self.box.open(bad, self.aad)
            self.assertClean(caught.exception)

    def test_moved_to_another_row_or_provider(self) -> None:
        """
        The associated data binds a blob to its proxy key and provider: copied
        to another row, or to another provider of the same row, it does not open.
        """
        blob = self.box.seal(PLAINTEXT, self.aad)
        for aad in (
            provider_key_aad(OTHER_ROW, "openai"),
            provider_key_aad(ROW, "anthropic"),
            provider_key_aad(ROW, "azure"),
            b"",
        ):
            with self.assertRaises(VaultError) as caught:
                self.box.open(blob, aad)
            self.assertClean(caught.exception)

    def test_aad_is_unambiguous(self) -> None:
        """The associated data is the documented bytes; no two (row, provider) share it."""
        self.assertEqual(
            provider_key_aad(ROW, "gemini"),
            b"majordomo proxy key provider\0" + ROW.encode() + b"\0gemini",
        )
        rows = [ROW, OTHER_ROW]
        providers = ["openai", "anthropic", "gemini", "azure"]
        aads = {provider_key_aad(r, p) for r in rows for p in providers}
        self.assertEqual(len(aads), len(rows) * len(providers))

    def test_fingerprint(self) -> None:
        """
        The fingerprint is 16 hex characters of a domain-separated SHA-256 of
        the key: the same for the same key, different for another, not a
        prefix of the key or of its plain digest.
        """
        key = bytes.fromhex(KEY_A)
        expected = hashlib.sha256(b"majordomo-vault-fingerprint\0" + key).hexdigest()[:16]
        self.assertEqual(self.box.fingerprint, expected)
        self.assertRegex(self.box.fingerprint, r"^[0-9a-f]{16}$")
        self.assertEqual(SecretBox.from_hex(KEY_A).fingerprint, self.box.fingerprint)
        self.assertNotEqual(SecretBox.from_hex(KEY_B).fingerprint, self.box.fingerprint)
        self.assertNotIn(self.box.fingerprint, KEY_A)
        self.assertNotIn(self.box.fingerprint, hashlib.sha256(key).hexdigest())
        self.assertNotIn(KEY_A, repr(self.box))
        self.assertIn(self.box.fingerprint, repr(self.box))

    def test_malformed_keys(self) -> None:
        """A key that is not 64 hex characters is one clear line that does not repeat it."""
        for text in ("", KEY_A[:-1], KEY_A + "0", "g" * 64, " " + KEY_A[1:], KEY_A[:32] + "é" * 32):
            with self.assertRaises(VaultError) as caught:
                SecretBox.from_hex(text)
            self.assertEqual(
                str(caught.exception),
                "secrets.encryption_key must be 64 hexadecimal characters (32 bytes)",
            )
        with self.assertRaises(VaultError):
            SecretBox(os.urandom(16))


class SecretsConfigTests(SynchronousTestCase):
    """The secrets section: checked at load, never shown, turned into boxes."""

    def test_defaults_mean_off(self) -> None:
        """Without a key proxy keys are off: no box, no previous boxes."""
        config = load_config(env={}, cwd=self.mktemp())
        self.assertEqual(config.secrets, SecretsConfig())
        self.assertIsNone(configured_box(config.secrets))
        self.assertEqual(previous_boxes(config.secrets), [])

    def test_from_environment(self) -> None:
        """MAJORDOMO_SECRETS_* set both keys; neither appears in the config's repr."""
        env = {
            "MAJORDOMO_SECRETS_ENCRYPTION_KEY": KEY_A,
            "MAJORDOMO_SECRETS_PREVIOUS_ENCRYPTION_KEYS": f" {KEY_B} , {KEY_A.upper()},",
        }
        config = load_config(env=env, cwd=self.mktemp())
        box = configured_box(config.secrets)
        assert box is not None
        self.assertEqual(box.fingerprint, SecretBox.from_hex(KEY_A).fingerprint)
        self.assertEqual(
            [b.fingerprint for b in previous_boxes(config.secrets)],
            [SecretBox.from_hex(KEY_B).fingerprint, box.fingerprint],
        )
        for text in (repr(config), repr(config.secrets), str(config)):
            self.assertNotIn(KEY_A, text)
            self.assertNotIn(KEY_B, text)

    def test_bad_keys_stop_loading_without_showing_them(self) -> None:
        """A malformed key is a ConfigError naming the setting, never quoting the value."""
        bad = KEY_A[:-2] + "zz"
        cases = [
            ({"MAJORDOMO_SECRETS_ENCRYPTION_KEY": bad}, "secrets.encryption_key: must be 64"),
            (
                {"MAJORDOMO_SECRETS_PREVIOUS_ENCRYPTION_KEYS": f"{KEY_B},{bad}"},
                "secrets.previous_encryption_keys: must be 64",
            ),
            ({"MAJORDOMO_SECRETS_ENCRYPTION_KEY": KEY_A[:-1]}, "secrets.encryption_key: must"),
        ]
        for env, start in cases:
            with self.assertRaises(ConfigError) as caught:
                load_config(env=env, cwd=self.mktemp())
            message = str(caught.exception)
            self.assertTrue(message.startswith(start), message)
            for secret in (bad, KEY_B, KEY_A[:-1], KEY_A[:20]):
                self.assertNotIn(secret, message)

    def test_unknown_secrets_key_refused(self) -> None:
        """A typo in the section is an error, as everywhere in the file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("secrets:\n  encryption_keys: ''\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, env={})
        self.assertEqual(str(caught.exception), "secrets.encryption_keys: unknown key")
