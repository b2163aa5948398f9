"""Install ocrd as a launchd agent (macOS) or a systemd user unit (Linux).

Every external command goes through one `run` callable, so tests pass a recording runner and a
temporary home instead of patching subprocess.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "launchd"
LABEL = "com.ocrd.daemon"
UNIT_NAME = "ocrd.service"
PLATFORMS = ("macos", "linux")
ACTIONS = ("install", "uninstall", "status", "restart")
BOOTSTRAP_RETRIES = 5

Runner = Callable[[list[str]], subprocess.CompletedProcess]


class ServiceError(RuntimeError):
    """A launchctl/systemctl command failed; the message holds its output."""


def current_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def program_argv() -> list[str]:
    """How a service manager starts this installation's `ocrd`: the console script next to the
    interpreter, else `python -m ocrd.cli.main`. Not resolved: a venv's python is a symlink and
    resolving it would leave the venv."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "ocrd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "ocrd.cli.main"]


def _daemon_argv(program: list[str], config_path: Path | None) -> list[str]:
    # --config is an option of the group: it goes before the command.
    config = ["--config", str(Path(config_path).absolute())] if config_path is not None else []
    return [*program, *config, "run"]


def render_plist(*, program: list[str], config_path: Path | None, log_dir: Path,
                 working_dir: Path, label: str = LABEL) -> str:
    """The launchd agent plist from launchd/ocrd.plist, filled in."""
    with open(TEMPLATE_DIR / "ocrd.plist", "rb") as f:
        plist = plistlib.load(f)
    plist["Label"] = label
    plist["ProgramArguments"] = _daemon_argv(program, config_path)
    plist["StandardOutPath"] = str(log_dir / "ocrd.out.log")
    plist["StandardErrorPath"] = str(log_dir / "ocrd.err.log")
    plist["WorkingDirectory"] = str(working_dir)
    if config_path is not None:
        plist["EnvironmentVariables"]["OCRD_CONFIG"] = str(Path(config_path).absolute())
    return plistlib.dumps(plist, sort_keys=False).decode()


def _systemd_quote(arg: str, *, dollars: bool = True) -> str:
    # systemd expands %specifiers everywhere and $VARS in ExecStart; double them so paths stay
    # literal.
    arg = arg.replace("%", "%%")
    if dollars:
        arg = arg.replace("$", "$$")
    if arg and not any(c in arg for c in ' \t"\'\\;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(*, program: list[str], config_path: Path | None, working_dir: Path) -> str:
    """The systemd user unit from launchd/ocrd.service, filled in."""
    text = (TEMPLATE_DIR / "ocrd.service").read_text(encoding="utf-8")
    env = ""
    if config_path is not None:
        env = "Environment=" + _systemd_quote(f"OCRD_CONFIG={Path(config_path).absolute()}", dollars=False)
    return (text.replace("@EXEC_START@", " ".join(_systemd_quote(a) for a in _daemon_argv(program, config_path)))
                .replace("@WORKING_DIR@", str(working_dir).replace("%", "%%"))
                .replace("@ENVIRONMENT@\n", env + "\n" if env else ""))


def _explain(error: str) -> str:
    """A failed systemctl/launchctl line, with the cause a person can act on where we know it."""
    if "Failed to connect to bus" in error or "DBUS_SESSION_BUS_ADDRESS" in error:
        return ("systemd has no user session here (`systemctl --user` cannot reach its bus): log in "
                "with a session (not `su`), or run `loginctl enable-linger $USER` once")
    return error


def _run_subprocess(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")


class ServiceManager:
    """Renders, installs, removes, inspects and restarts the ocrd service for one platform."""

    def __init__(self, platform: str, *, home: Path, uid: int, run: Runner = _run_subprocess,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, not {platform!r}")
        self.platform, self.home, self.uid, self.run = platform, Path(home), uid, run
        self.sleep = sleep

    @property
    def file_path(self) -> Path:
        if self.platform == "macos":
            return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return self.home / ".config" / "systemd" / "user" / UNIT_NAME

    @property
    def log_dir(self) -> Path:
        """Where launchd sends stdout/stderr (systemd: the journal)."""
        return self.home / "Library" / "Logs" / "ocrd"

    def render(self, *, program: list[str], config_path: Path | None, working_dir: Path) -> str:
        if self.platform == "macos":
            return render_plist(program=program, config_path=config_path, log_dir=self.log_dir,
                                working_dir=working_dir)
        return render_unit(program=program, config_path=config_path, working_dir=working_dir)

    def commands(self, action: str) -> list[list[str]]:
        """The command lines an action runs, in order."""
        if self.platform == "macos":
            domain, target = f"gui/{self.uid}", f"gui/{self.uid}/{LABEL}"
            return {
                "install": [["launchctl", "bootout", target], ["launchctl", "enable", target],
                            ["launchctl", "bootstrap", domain, str(self.file_path)]],
                "uninstall": [["launchctl", "bootout", target]],
                "status": [["launchctl", "print", target]],
                "restart": [["launchctl", "kickstart", "-k", target]],
            }[action]
        ctl = ["systemctl", "--user"]
        return {
            "install": [[*ctl, "daemon-reload"], [*ctl, "enable", "--now", UNIT_NAME]],
            "uninstall": [[*ctl, "disable", "--now", UNIT_NAME], [*ctl, "daemon-reload"]],
            "status": [[*ctl, "status", UNIT_NAME]],
            "restart": [[*ctl, "restart", UNIT_NAME]],
        }[action]

    def _run_all(self, cmds: list[list[str]], *, may_fail: tuple[str, ...] = ()) -> None:
        for cmd in cmds:
            result = self.run(cmd)
            # `launchctl bootout` returns before the old instance is gone; a bootstrap right after
            # it fails with "5: Input/output error" until it is. Try again for a few seconds.
            for _ in range(BOOTSTRAP_RETRIES if "bootstrap" in cmd else 0):
                if result.returncode == 0:
                    break
                self.sleep(1.0)
                result = self.run(cmd)
            if result.returncode != 0 and not any(word in cmd for word in may_fail):
                output = " ".join(f"{result.stderr or ''} {result.stdout or ''}".split())
                raise ServiceError(f"`{' '.join(cmd)}` exited {result.returncode}: {output}")

    def install(self, content: str) -> Path:
        """Write the plist/unit and (re)load it; returns the file written."""
        path = self.file_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.platform == "macos":
            self.log_dir.mkdir(parents=True, exist_ok=True)  # launchd does not create it
        previous = path.read_text(encoding="utf-8") if path.exists() else None
        self._write(path, content)
        try:
            # bootout fails when the agent was not loaded yet: that is the normal first install.
            self._run_all(self.commands("install"), may_fail=("bootout",))
        except ServiceError as exc:   # leave things as they were, and say why in one line
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                self._write(path, previous)
            raise ServiceError(_explain(str(exc)) + "; nothing was installed") from None
        return path

    @staticmethod
    def _write(path: Path, content: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)

    def uninstall(self) -> bool:
        """Stop and remove the service; False if no file was installed."""
        cmds = self.commands("uninstall")
        if self.platform == "macos":
            self._run_all(cmds, may_fail=("bootout",))
            existed = self.file_path.exists()
            self.file_path.unlink(missing_ok=True)
            return existed
        # systemd: disable while the unit file still exists, then reload without it.
        self._run_all(cmds[:1], may_fail=("disable",))
        existed = self.file_path.exists()
        self.file_path.unlink(missing_ok=True)
        self._run_all(cmds[1:])
        return existed

    def status(self) -> subprocess.CompletedProcess:
        """The service manager's own report (returncode != 0: not loaded / not running)."""
        return self.run(self.commands("status")[0])

    def restart(self) -> None:
        self._run_all(self.commands("restart"))

    def dry_run(self, action: str, content: str | None) -> str:
        """What `action` would do, for `--dry-run`: the file it would write, then its commands."""
        lines = [f"# {self.file_path}", content.rstrip("\n"), ""] if content is not None else []
        verb = {"install": "write the file above, then run",
                "uninstall": f"run, and remove {self.file_path}"}.get(action, "run")
        lines.append(f"# would {verb}:")
        lines += [shlex.join(cmd) for cmd in self.commands(action)]
        return "\n".join(lines)

    def perform(self, action: str, content: str | None) -> tuple[str, int]:
        """Run `action` (install needs the rendered `content`); returns what to print and the exit
        status. Raises ServiceError when a launchctl/systemctl command fails."""
        if action == "install":
            if content is None:
                raise ValueError("install needs the rendered plist/unit")
            path = self.install(content)
            logs = (f"logs: {self.log_dir}" if self.platform == "macos"
                    else f"logs: journalctl --user -u {UNIT_NAME}")
            return f"installed {path}\n{logs}; check with `ocrd service status` and `ocrd status`", 0
        if action == "uninstall":
            existed = self.uninstall()
            return (f"removed {self.file_path}" if existed
                    else f"not installed ({self.file_path} absent)"), 0
        if action == "restart":
            self.restart()
            return "restarted", 0
        result = self.status()
        out = (result.stdout or "") + (result.stderr or "")
        return out.rstrip("\n") or f"exit status {result.returncode}", 0 if result.returncode == 0 else 1
