# -*- test-case-name: tests.test_proxykeys_cli -*-
"""
C{majordomo secrets rotate}, and how a command takes a secret from its
operator: piped on stdin, or typed at a prompt that does not echo it, never
from the command line (where C{ps} and the shell's history would keep it).

A secret read here is never written back: not to the output, not in an
error message.  Rotation re-encrypts every stored provider key under a new
encryption key in one transaction (L{majordomo.proxykeys.store.rotate}); the
old keys are the configured C{secrets.encryption_key} and
C{secrets.previous_encryption_keys}.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
import termios
import threading
from typing import Any, TextIO

from twisted.internet import defer, threads
from twisted.python import usage

from majordomo.cli.options import CommandOptions
from majordomo.config import Config
from majordomo.db import Database
from majordomo.proxykeys.store import rotate
from majordomo.vault import SecretBox, VaultError, configured_box, previous_boxes

# What a secret may be: one line of printable ASCII, no spaces (it ends up in an
# HTTP header or a hex decoder), and not endless (a file piped by mistake).
_MAX_SECRET = 4096
NO_ENCRYPTION_KEY = (
    "majordomo: secrets.encryption_key is not set (64 hexadecimal characters, "
    "e.g. from `openssl rand -hex 32`); provider keys cannot be stored without it\n"
)


class SecretInputError(Exception):
    """The operator gave no usable secret (the message never holds what was given)."""


def _read_piped(stdin: Any) -> str:
    text: str = stdin.read(_MAX_SECRET + 1)
    if len(text) > _MAX_SECRET:
        raise SecretInputError(f"more than {_MAX_SECRET} characters on stdin")
    return text


def _prompt(reactor: Any, prompt: str) -> defer.Deferred[str]:
    """
    C{getpass} in a daemon thread of its own, so that Ctrl-C stops the
    command at once (a pool thread blocked on the terminal would hold up the
    reactor's shutdown until Enter); the terminal's modes are put back at
    shutdown, or its echo would stay off after a Ctrl-C.
    """
    answer: defer.Deferred[str] = defer.Deferred()
    saved = _terminal_modes()

    def interrupted() -> None:  # Ctrl-C (or SIGTERM) while the prompt waits
        if saved is not None:
            _restore_terminal(saved)
        if not answer.called:
            answer.errback(SecretInputError("cancelled"))

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)

    def answered(text: str, error: BaseException | None) -> None:  # in the reactor
        reactor.removeSystemEventTrigger(trigger)
        if saved is not None:
            os.close(saved[0])
        if answer.called:
            return
        if error is None:
            answer.callback(text)
        else:
            answer.errback(error)

    def ask() -> None:  # in the prompt's thread
        try:
            text = getpass.getpass(prompt)
        except (EOFError, KeyboardInterrupt):
            reactor.callFromThread(answered, "", SecretInputError("cancelled"))
        except BaseException as e:  # delivered to the command, whatever it is
            reactor.callFromThread(answered, "", e)
        else:
            reactor.callFromThread(answered, text, None)

    threading.Thread(target=ask, name="majordomo-prompt", daemon=True).start()
    return answer


def _terminal_modes() -> tuple[int, list[Any]] | None:
    """The controlling terminal (a descriptor of it) and its modes now, if there is one."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        return fd, termios.tcgetattr(fd)
    except termios.error:
        os.close(fd)
        return None


def _restore_terminal(saved: tuple[int, list[Any]]) -> None:
    fd, modes = saved
    with contextlib.suppress(termios.error):
        termios.tcsetattr(fd, termios.TCSAFLUSH, modes)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


async def read_secret(reactor: Any, prompt: str, what: str) -> str:
    """
    The secret C{what} from stdin when it is not a terminal, else from a
    no-echo prompt; read in a thread so the reactor never waits on it.
    Surrounding whitespace (the newline of C{echo}) is dropped; an empty
    value or one that is not a single printable word is refused.
    """
    stdin = sys.stdin
    if stdin is None:
        text = ""
    elif _is_terminal(stdin):
        text = await _prompt(reactor, prompt)
    else:
        text = await threads.deferToThreadPool(reactor, reactor.getThreadPool(), _read_piped, stdin)
    secret = text.strip()
    if not secret:
        raise SecretInputError(f"no {what} given (pipe it on stdin or type it at the prompt)")
    if not all("\x21" <= c <= "\x7e" for c in secret):
        raise SecretInputError(f"the {what} must be one line of printable ASCII with no spaces")
    return secret


class SecretsOptions(usage.Options):
    synopsis = "rotate"
    subCommands = [
        [
            "rotate",
            None,
            CommandOptions,
            "Re-encrypt every stored provider key under a new encryption key "
            "(read from stdin or a prompt).",
        ],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("secrets needs a subcommand: " + self.synopsis)


async def _rotate(reactor: Any, config: Config, out: TextIO, err: TextIO) -> int:
    current = configured_box(config.secrets)
    if current is None:
        err.write(NO_ENCRYPTION_KEY)
        return 1
    old = [current, *previous_boxes(config.secrets)]
    text = await read_secret(
        reactor, "New encryption key (64 hexadecimal characters): ", "new encryption key"
    )
    try:
        new = SecretBox.from_hex(text)
    except VaultError:
        raise SecretInputError(
            "the new encryption key must be 64 hexadecimal characters (32 bytes)"
        ) from None
    if new.fingerprint in {box.fingerprint for box in old}:
        raise SecretInputError(
            "the new encryption key is one configured already; make a new one "
            "(e.g. `openssl rand -hex 32`)"
        )
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        count = await rotate(db, new, old)
    finally:
        db.close()
    noun = "provider key" if count == 1 else "provider keys"
    out.write(
        f"Re-encrypted {count} stored {noun} under encryption key {new.fingerprint}.\n\n"
        "Now set the new key as secrets.encryption_key (MAJORDOMO_SECRETS_ENCRYPTION_KEY)\n"
        "wherever the gateway and the majordomo command run: stored provider keys no\n"
        "longer open with the old one.\n"
    )
    return 0


async def secrets_command(
    reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO
) -> int:
    """C{majordomo secrets rotate}; a bad secret or key is one line on C{err}, exit 1."""
    try:
        return await _rotate(reactor, config, out, err)
    except (SecretInputError, VaultError) as e:
        err.write(f"majordomo: {e}\n")
        return 1
