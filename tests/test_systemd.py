"""
The systemd units in systemd/: both pass `systemd-analyze verify`, run the
README's twistd command as an unprivileged, sandboxed user, stop gracefully
within their timeout, and the template runs instances on one port with their
spools apart.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from majordomo.config import ServerConfig, StorageConfig, load_config

UNIT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "systemd")
MAIN = "majordomo.service"
TEMPLATE = "majordomo@.service"
INSTANCE = "majordomo@1.service"  # the instance verified: verify cannot load a bare template
TWISTD = "/opt/majordomo/venv/bin/twistd"
EXEC_START = [
    TWISTD,
    "--nodaemon",
    "--pidfile=",
    "majordomo",
    "--config",
    "/etc/majordomo/majordomo.yaml",
]
# Where the host keeps its packaged units (the same directory on a merged /usr).
SYSTEM_UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system")
# majordomo/service.py, GatewayService.stopService: after draining requests for
# server.shutdown_timeout, it waits at most 10 s for the writer and 10 s for bodies.
STOP_BOUNDS_AFTER_DRAIN = 10.0 + 10.0

# Unit file model: section -> key -> every value assigned, in order.
Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """
    Read a unit file the way systemd does, as far as these tests need:
    sections, comments (# and ;), backslash continuations, repeated keys.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"not a unit file line: {line!r}")
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def read_unit(name: str) -> Unit:
    with open(os.path.join(UNIT_DIR, name), encoding="utf-8") as f:
        return parse_unit(f.read())


def last(unit: Unit, key: str, section: str = "Service") -> str | None:
    """The value that wins for a single-valued setting: the last one assigned."""
    values = unit.get(section, {}).get(key)
    return values[-1] if values else None


def boolean(value: str | None) -> bool:
    return (value or "").lower() in ("1", "yes", "true", "on")


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SPAN_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 0.001,
    "msec": 0.001,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}


def seconds(span: str) -> float:
    """A systemd time span (C{60}, C{90s}, C{1min 30s}) in seconds."""
    text = span.strip().lower()
    if not re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[a-z]*)+", text):
        raise ValueError(f"not a time span: {span!r}")
    return sum(float(n) * _SPAN_UNITS[u] for n, u in _SPAN.findall(text))


def expand(value: str, instance: str) -> str:
    """Resolve the specifiers the units use, as systemd would for a system service."""
    specifiers = {"S": "/var/lib", "i": instance, "%": "%"}
    return re.sub(r"%(.)", lambda m: specifiers[m.group(1)], value)


def environment(unit: Unit, instance: str = "") -> dict[str, str]:
    """The variables the unit's Environment= lines set (EnvironmentFile= aside)."""
    env: dict[str, str] = {}
    for line in unit["Service"].get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = expand(value, instance)
    return env


def verify_units(unit_dir: str, scratch: str) -> tuple[bool, str]:
    """
    Run C{systemd-analyze verify} on both units of C{unit_dir} as .ci/run does:
    in a throwaway root (under C{scratch}) holding the unit files unchanged, the
    host's packaged units (sysinit.target and the other default dependencies)
    and a stand-in for the installed twistd, since verify requires ExecStart's
    program to exist and, with --root, looks for it inside the root.

    verify exits 0 after only warning about an unknown key or an unparsable
    value, so any line of its output naming one of our units fails as well.
    Return (passed, output).
    """
    root = os.path.join(scratch, "root")
    units = os.path.join(root, "etc", "systemd", "system")
    os.makedirs(units)
    # One directory twice on a merged /usr: copy it once.
    for system_dir in dict.fromkeys(map(os.path.realpath, SYSTEM_UNIT_DIRS)):
        if os.path.isdir(system_dir):
            shutil.copytree(
                system_dir,
                os.path.join(root, "usr", "lib", "systemd", "system"),
                symlinks=True,
                dirs_exist_ok=True,
            )
    for name in (MAIN, TEMPLATE):
        shutil.copy(os.path.join(unit_dir, name), units)
    stand_in = root + TWISTD
    os.makedirs(os.path.dirname(stand_in))
    with open(stand_in, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(stand_in, 0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", MAIN, INSTANCE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    about_ours = re.search(r"majordomo(@1?)?\.service", output)
    return result.returncode == 0 and not about_ours, output


class VerifyTests(SynchronousTestCase):
    """`systemd-analyze verify` accepts both units, and would notice a broken one."""

    def setUp(self) -> None:
        if shutil.which("systemd-analyze") is None:
            # Fail, never skip: .ci/run installs systemd when this is missing.
            self.fail(
                "systemd-analyze is missing: apt-get install --no-install-recommends systemd "
                "(.ci/run does)"
            )

    def test_units_verify(self) -> None:
        """systemd-analyze verify passes on majordomo.service and an instance of the template."""
        passed, output = verify_units(UNIT_DIR, self.mktemp())
        self.assertTrue(passed, f"systemd-analyze verify failed:\n{output}")

    def test_verify_catches_mistakes(self) -> None:
        """
        The verification is not vacuous: a misspelt key (which verify only
        warns about, exiting 0), a bad value and a wrong ExecStart path are
        each caught, in either unit.
        """
        mistakes = [
            (TEMPLATE, "ProtectClock=yes", "ProtectClok=yes"),
            (MAIN, "KillMode=mixed", "KillMode=gently"),
            (MAIN, f"ExecStart={TWISTD}", "ExecStart=/opt/nowhere/twistd"),
        ]
        for name, good, bad in mistakes:
            broken = self.mktemp()
            shutil.copytree(UNIT_DIR, broken)
            path = os.path.join(broken, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            self.assertIn(good, text)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(good, bad))
            passed, output = verify_units(broken, self.mktemp())
            self.assertFalse(passed, f"{name} with {bad!r} passed verification:\n{output}")


class UnitTests(SynchronousTestCase):
    """What both units must say (the issue's list), read from the files."""

    def both(self) -> list[tuple[str, Unit]]:
        return [(MAIN, read_unit(MAIN)), (TEMPLATE, read_unit(TEMPLATE))]

    def test_parser(self) -> None:
        """The test's unit parser keeps repeated keys, joins continuations, skips comments."""
        unit = parse_unit(
            textwrap.dedent(
                """\
                # comment
                [Service]
                ; another
                Environment=A=1
                Environment=B=2 \\
                  C=3
                CapabilityBoundingSet=
                """
            )
        )
        self.assertEqual(unit["Service"]["Environment"], ["A=1", "B=2 C=3"])
        self.assertEqual(environment(unit), {"A": "1", "B": "2", "C": "3"})
        self.assertEqual(last(unit, "CapabilityBoundingSet"), "")
        self.assertEqual(seconds("1min 30s"), 90.0)

    def test_exec_start(self) -> None:
        """Each unit runs exactly `twistd --nodaemon --pidfile= majordomo --config
        /etc/majordomo/majordomo.yaml`, from the venv at /opt/majordomo/venv."""
        for name, unit in self.both():
            self.assertEqual(len(unit["Service"]["ExecStart"]), 1, name)
            self.assertEqual(shlex.split(last(unit, "ExecStart") or ""), EXEC_START, name)

    def test_unprivileged(self) -> None:
        """Each unit runs as the majordomo user and group, with no capability at all."""
        for name, unit in self.both():
            self.assertEqual(last(unit, "User"), "majordomo", name)
            self.assertEqual(last(unit, "Group"), "majordomo", name)
            self.assertEqual(last(unit, "CapabilityBoundingSet"), "", name)
            self.assertEqual(last(unit, "AmbientCapabilities") or "", "", name)

    def test_hardening(self) -> None:
        """Each unit sets every sandboxing directive the issue lists, to its strict value."""
        on = [
            "NoNewPrivileges",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "LockPersonality",
        ]
        for name, unit in self.both():
            for key in on:
                self.assertTrue(boolean(last(unit, key)), f"{name}: {key}={last(unit, key)}")
            self.assertEqual(last(unit, "ProtectSystem"), "strict", name)
            self.assertEqual(last(unit, "SystemCallArchitectures"), "native", name)
            self.assertEqual(unit["Service"]["SystemCallFilter"], ["@system-service"], name)
            self.assertEqual(last(unit, "UMask"), "0077", name)
            families = unit["Service"]["RestrictAddressFamilies"]
            self.assertEqual(len(families), 1, name)
            self.assertEqual(set(families[0].split()), {"AF_INET", "AF_INET6", "AF_UNIX"}, name)

    def test_writes_only_its_state_directory(self) -> None:
        """
        Nothing but the StateDirectory is writable (no ReadWritePaths=), and
        the main unit's spool lands in it: StateDirectory=majordomo makes
        systemd set STATE_DIRECTORY, and storage.spool_dir defaults to
        $STATE_DIRECTORY/spool.
        """
        for name, unit in self.both():
            self.assertNotIn("ReadWritePaths", unit["Service"], name)
        main = read_unit(MAIN)
        self.assertEqual(last(main, "StateDirectory"), "majordomo")
        env = environment(main)
        self.assertNotIn("MAJORDOMO_STORAGE_SPOOL_DIR", env)
        env["STATE_DIRECTORY"] = expand("%S/majordomo", "")
        self.assertEqual(StorageConfig().spool_path(env), "/var/lib/majordomo/spool")

    def test_secrets_file(self) -> None:
        """Each unit reads MAJORDOMO_* settings from the optional /etc/majordomo/majordomo.env."""
        for name, unit in self.both():
            self.assertEqual(
                unit["Service"]["EnvironmentFile"], ["-/etc/majordomo/majordomo.env"], name
            )

    def test_graceful_stop(self) -> None:
        """
        Each unit stops twistd with SIGTERM only (KillMode mixed or process),
        waits longer than the gateway's own bounded shutdown (the default
        server.shutdown_timeout drain, then 10 s writer flush and 10 s body
        uploads), counts the SIGTERM twistd re-raises after a clean shutdown as
        success, and restarts only on failure.
        """
        worst = ServerConfig().shutdown_timeout + STOP_BOUNDS_AFTER_DRAIN
        for name, unit in self.both():
            self.assertEqual(last(unit, "KillSignal"), "SIGTERM", name)
            self.assertIn(last(unit, "KillMode"), ("mixed", "process"), name)
            self.assertGreater(seconds(last(unit, "TimeoutStopSec") or "0"), worst, name)
            success = " ".join(unit["Service"].get("SuccessExitStatus", [])).split()
            self.assertIn("SIGTERM", success, name)
            self.assertEqual(last(unit, "Restart"), "on-failure", name)
            self.assertEqual(unit["Install"]["WantedBy"], ["multi-user.target"], name)

    def test_no_memory_deny_write_execute(self) -> None:
        """
        Neither unit turns MemoryDenyWriteExecute on: it would break every HTTPS
        upstream connection (see test_cffi_callbacks_need_write_execute).
        """
        for name, unit in self.both():
            self.assertFalse(boolean(last(unit, "MemoryDenyWriteExecute")), name)

    def test_cffi_callbacks_need_write_execute(self) -> None:
        """
        Why MemoryDenyWriteExecute stays off: under the kernel's form of the
        same rule (PR_SET_MDWE; systemd's seccomp form refuses the same
        writable+executable mappings) a pyOpenSSL verify callback, which Twisted
        sets on every TLS client connection, cannot be created, while it can
        without.  If this starts failing because cffi no longer needs such
        memory, turn the directive on.
        """
        script = textwrap.dedent(
            """\
            import ctypes, sys
            if sys.argv[1] == "mdwe":
                PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
                    sys.exit(3)
            from OpenSSL import SSL
            try:
                SSL.Context(SSL.TLS_METHOD).set_verify(SSL.VERIFY_PEER, lambda *a: True)
            except MemoryError:
                sys.exit(4)
            """
        )

        def run(mode: str) -> int:
            return subprocess.run([sys.executable, "-c", script, mode], timeout=60).returncode

        self.assertEqual(run("plain"), 0)
        outcome = run("mdwe")
        self.assertNotEqual(outcome, 3, "this kernel has no PR_SET_MDWE (Linux < 6.3)")
        self.assertEqual(outcome, 4, "a cffi callback was created under MDWE")


class TemplateTests(SynchronousTestCase):
    """majordomo@.service: instances share the port and keep their journals apart."""

    def instance_config(self, instance: str) -> tuple[bool, str]:
        """(server.reuse_port, spool path) of an instance, through the real config loader."""
        empty = self.mktemp()
        with open(empty, "w"):
            pass
        unit = read_unit(TEMPLATE)
        env = environment(unit, instance)
        env["STATE_DIRECTORY"] = "/var/lib/" + expand(last(unit, "StateDirectory") or "", instance)
        config = load_config(empty, env=env)
        return config.server.reuse_port, config.storage.spool_path(env)

    def test_reuse_port(self) -> None:
        """Every instance sets MAJORDOMO_SERVER_REUSE_PORT=true: server.reuse_port is on."""
        unit = read_unit(TEMPLATE)
        self.assertEqual(environment(unit, "1")["MAJORDOMO_SERVER_REUSE_PORT"], "true")
        self.assertTrue(self.instance_config("1")[0])

    def test_spool_per_instance(self) -> None:
        """
        Each instance's spool is its own directory, inside that instance's
        StateDirectory (so systemd creates it, owned by the service user and
        writable despite ProtectSystem=strict).
        """
        unit = read_unit(TEMPLATE)
        spools = {}
        for instance in ("1", "2"):
            state = "/var/lib/" + expand(last(unit, "StateDirectory") or "", instance)
            spool = self.instance_config(instance)[1]
            self.assertTrue(spool.startswith(state + "/"), f"{spool} is not under {state}")
            spools[instance] = spool
        self.assertEqual(spools["1"], "/var/lib/majordomo/1/spool")
        self.assertNotEqual(spools["1"], spools["2"])

    def test_otherwise_like_the_main_unit(self) -> None:
        """
        Apart from what makes it a template (its environment, state and working
        directories, log identifier, description), the template says exactly
        what majordomo.service says, so the two cannot drift apart.
        """
        per_instance = {
            ("Unit", "Description"),
            ("Service", "Environment"),
            ("Service", "StateDirectory"),
            ("Service", "WorkingDirectory"),
            ("Service", "SyslogIdentifier"),
        }
        main, template = read_unit(MAIN), read_unit(TEMPLATE)
        self.assertEqual(set(main), set(template))
        for section in main:
            keys = set(main[section]) | set(template[section])
            for key in keys - {k for s, k in per_instance if s == section}:
                self.assertEqual(
                    main[section].get(key), template[section].get(key), f"[{section}] {key}"
                )
        # The environment differs only by the two per-instance settings.
        extra = set(environment(template, "1")) - set(environment(main))
        self.assertEqual(extra, {"MAJORDOMO_SERVER_REUSE_PORT", "MAJORDOMO_STORAGE_SPOOL_DIR"})
