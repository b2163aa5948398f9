"""`ocrd service`: the rendered plist/unit, and the exact launchctl/systemctl lines through the seam."""

from __future__ import annotations

import configparser
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import OCRD, Recorder, invoke, write_config
from ocrd.cli.service import (LABEL, ServiceError, ServiceManager, program_argv, render_plist,
                                 render_unit)

PROGRAM = ["/opt/ocrd/.venv/bin/ocrd"]


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep systemd's CamelCase keys
    parser.read_string(text)
    return parser


def test_program_argv_is_the_console_script_next_to_the_interpreter():
    assert program_argv() == [str(Path(sys.executable).absolute().parent / "ocrd")]
    assert program_argv() == [str(OCRD)] or not OCRD.exists()


def test_plist_has_every_key_with_the_right_values(tmp_path: Path):
    config = tmp_path / "my config.toml"
    text = render_plist(program=PROGRAM, config_path=config, log_dir=tmp_path / "logs",
                        working_dir=tmp_path)
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "com.ocrd.daemon"
    assert plist["ProgramArguments"] == [*PROGRAM, "--config", str(config), "run"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 30
    assert plist["ProcessType"] == "Interactive"
    assert "LowPriorityIO" not in plist
    assert plist["ExitTimeOut"] == 60
    assert plist["StandardOutPath"] == str(tmp_path / "logs" / "ocrd.out.log")
    assert plist["StandardErrorPath"] == str(tmp_path / "logs" / "ocrd.err.log")
    env = plist["EnvironmentVariables"]
    assert env["PATH"].startswith("/opt/homebrew/bin:")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["OCRD_CONFIG"] == str(config)
    assert plist["WorkingDirectory"] == str(tmp_path)


def test_plist_without_config_has_no_config_argument(tmp_path: Path):
    plist = plistlib.loads(render_plist(program=["/usr/bin/python3", "-m", "ocrd.cli.main"],
                                        config_path=None, log_dir=tmp_path, working_dir=tmp_path).encode())
    assert plist["ProgramArguments"] == ["/usr/bin/python3", "-m", "ocrd.cli.main", "run"]
    assert "OCRD_CONFIG" not in plist["EnvironmentVariables"]


def test_unit_has_every_key_with_the_right_values(tmp_path: Path):
    config = tmp_path / "my 100% config.toml"
    text = render_unit(program=PROGRAM, config_path=config, working_dir=tmp_path)
    unit = parse_unit(text)
    assert unit["Unit"]["Description"]
    # network-online.target does nothing in a user unit (the hostile trial): no After= at all
    assert "After" not in unit["Unit"]
    svc = unit["Service"]
    assert svc["RestartPreventExitStatus"] == "78"     # a corrupt ledger: restarting won't help
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    # systemd quoting is close enough to shell quoting; % is doubled for systemd's specifiers.
    assert shlex.split(svc["ExecStart"]) == [*PROGRAM, "--config", str(config).replace("%", "%%"), "run"]
    assert svc["Restart"] == "on-failure"
    assert svc["RestartSec"] == "30"
    assert svc["TimeoutStopSec"] == "60"
    assert svc["KillMode"] == "mixed"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["TimeoutStartSec"] == "900"
    assert svc["WorkingDirectory"] == str(tmp_path)
    env_lines = [line for line in text.splitlines() if line.startswith("Environment=")]
    assert "Environment=PYTHONUNBUFFERED=1" in env_lines
    assert any("OCRD_CONFIG=" + str(config).replace("%", "%%") in line for line in env_lines)
    assert unit["Install"]["WantedBy"] == "default.target"
    assert "@" not in "".join(line for line in text.splitlines() if not line.startswith("#"))


def test_unit_without_config(tmp_path: Path):
    text = render_unit(program=PROGRAM, config_path=None, working_dir=tmp_path)
    assert parse_unit(text)["Service"]["ExecStart"] == f"{PROGRAM[0]} run"
    assert "OCRD_CONFIG" not in text


# -- the runner seam ----------------------------------------------------------------------------

def test_macos_install_writes_the_plist_and_bootstraps_it(tmp_path: Path):
    rec = Recorder(codes={"bootout": 3})  # not loaded yet: the normal first install
    manager = ServiceManager("macos", home=tmp_path, uid=501, run=rec)
    path = manager.install("<plist/>")
    assert path == tmp_path / "Library" / "LaunchAgents" / "com.ocrd.daemon.plist"
    assert path.read_text() == "<plist/>"
    assert (tmp_path / "Library" / "Logs" / "ocrd").is_dir()
    assert rec.calls == [
        ["launchctl", "bootout", f"gui/501/{LABEL}"],
        ["launchctl", "enable", f"gui/501/{LABEL}"],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]


def test_macos_install_reports_a_failed_bootstrap(tmp_path: Path):
    rec, naps = Recorder(codes={"bootstrap": 5}), []
    manager = ServiceManager("macos", home=tmp_path, uid=501, run=rec, sleep=naps.append)
    with pytest.raises(ServiceError, match="bootstrap.*exited 5.*oops"):
        manager.install("<plist/>")
    assert sum("bootstrap" in c for c in rec.calls) == 1 + len(naps) and naps  # retried, then gave up


def test_macos_bootstrap_retries_while_bootout_finishes(tmp_path: Path):
    class SlowBootout(Recorder):
        def __call__(self, cmd):
            result = super().__call__(cmd)
            if "bootstrap" in cmd and sum("bootstrap" in c for c in self.calls) < 3:
                result.returncode = 5
            return result

    rec = SlowBootout()
    manager = ServiceManager("macos", home=tmp_path, uid=501, run=rec, sleep=lambda s: None)
    manager.install("<plist/>")
    assert [c[1] for c in rec.calls] == ["bootout", "enable", "bootstrap", "bootstrap", "bootstrap"]


def test_macos_uninstall_status_restart(tmp_path: Path):
    rec = Recorder()
    manager = ServiceManager("macos", home=tmp_path, uid=501, run=rec)
    manager.install("<plist/>")
    rec.calls.clear()
    assert manager.uninstall() is True
    assert not manager.file_path.exists()
    assert manager.status().stdout == f"out of gui/501/{LABEL}\n"
    manager.restart()
    assert rec.calls == [
        ["launchctl", "bootout", f"gui/501/{LABEL}"],
        ["launchctl", "print", f"gui/501/{LABEL}"],
        ["launchctl", "kickstart", "-k", f"gui/501/{LABEL}"],
    ]
    assert manager.uninstall() is False  # already gone: still fine


def test_linux_install_uninstall_status_restart(tmp_path: Path):
    rec = Recorder()
    manager = ServiceManager("linux", home=tmp_path, uid=1000, run=rec)
    path = manager.install("[Unit]\n")
    assert path == tmp_path / ".config" / "systemd" / "user" / "ocrd.service"
    assert path.read_text() == "[Unit]\n"
    assert rec.calls == [["systemctl", "--user", "daemon-reload"],
                         ["systemctl", "--user", "enable", "--now", "ocrd.service"]]
    rec.calls.clear()
    assert manager.uninstall() is True
    assert not path.exists()
    manager.status()
    manager.restart()
    assert rec.calls == [["systemctl", "--user", "disable", "--now", "ocrd.service"],
                         ["systemctl", "--user", "daemon-reload"],
                         ["systemctl", "--user", "status", "ocrd.service"],
                         ["systemctl", "--user", "restart", "ocrd.service"]]


def test_linux_restart_failure_is_an_error(tmp_path: Path):
    manager = ServiceManager("linux", home=tmp_path, uid=1000, run=Recorder(codes={"restart": 1}))
    with pytest.raises(ServiceError):
        manager.restart()


# -- through the CLI ----------------------------------------------------------------------------

def test_cli_install_dry_run_changes_nothing(tmp_path: Path, config_file: Path):
    home = tmp_path / "home"
    home.mkdir()
    rec = Recorder()
    for platform in ("linux", "macos"):
        result = invoke(config_file, "service", "install", "--dry-run", "--platform", platform,
                        obj={"service_run": rec}, env={"HOME": str(home)})
        assert result.exit_code == 0, result.output
        assert str(config_file) in result.output
    assert rec.calls == []
    assert list(home.iterdir()) == []


def test_cli_dry_run_plist_parses(tmp_path: Path, config_file: Path):
    result = invoke(config_file, "service", "install", "--dry-run", "--platform", "macos",
                    env={"HOME": str(tmp_path)})
    body = result.output.split("<?xml", 1)[1].split("</plist>", 1)[0]
    plist = plistlib.loads(("<?xml" + body + "</plist>").encode())
    assert plist["ProgramArguments"][-3:] == ["--config", str(config_file), "run"]
    assert plist["WorkingDirectory"] == str(config_file.parent)
    assert "launchctl bootstrap gui/" in result.output


def test_cli_install_for_another_platform_is_a_usage_error(config_file: Path):
    other = "linux" if sys.platform == "darwin" else "macos"
    result = invoke(config_file, "service", "install", "--platform", other, obj={"service_run": Recorder()})
    assert result.exit_code == 2
    assert "--dry-run" in result.output


def test_cli_install_and_uninstall_through_the_seam(tmp_path: Path, config_file: Path):
    rec = Recorder()
    home = tmp_path / "home"
    result = invoke(config_file, "service", "install", obj={"service_run": rec}, env={"HOME": str(home)})
    assert result.exit_code == 0, result.output
    manager = ServiceManager("macos" if sys.platform == "darwin" else "linux", home=home, uid=0)
    assert manager.file_path.exists()
    assert str(config_file) in manager.file_path.read_text()
    assert [c[-1] for c in rec.calls][-1] in ("ocrd.service", str(manager.file_path))
    result = invoke(config_file, "service", "uninstall", obj={"service_run": rec}, env={"HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert not manager.file_path.exists()


def test_cli_status_exit_code_follows_the_service_manager(tmp_path: Path):
    result = invoke(None, "service", "status", obj={"service_run": Recorder(codes={"status": 3, "print": 3})},
                    env={"HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert "out of" in result.output


def test_cli_install_refuses_a_bad_config(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers]\ncount = -1\n")
    rec = Recorder()
    result = invoke(bad, "service", "install", obj={"service_run": rec}, env={"HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "workers.count" in result.output
    assert rec.calls == []


def test_cli_uses_the_config_from_the_environment(tmp_path: Path):
    config = write_config(tmp_path, name="env.toml")
    result = invoke(None, "service", "install", "--dry-run",
                    env={"HOME": str(tmp_path), "OCRD_CONFIG": str(config)})
    assert result.exit_code == 0
    assert "--config" in result.output and str(config) in result.output


def test_install_without_a_user_bus_says_why_and_leaves_nothing_behind(tmp_path: Path):
    class NoBus(Recorder):
        def __call__(self, cmd):
            super().__call__(cmd)
            return subprocess.CompletedProcess(cmd, 1, "", "Failed to connect to bus: No medium found\n")

    manager = ServiceManager("linux", home=tmp_path, uid=1000, run=NoBus())
    with pytest.raises(ServiceError) as err:
        manager.install("[Unit]\n")
    assert "no user session" in str(err.value) and "nothing was installed" in str(err.value)
    assert "\n" not in str(err.value)
    assert not manager.file_path.exists()        # no unit file left behind (the hostile trial)
