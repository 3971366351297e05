"""``mlx-serve service``: the launchd agent and the systemd unit it writes, and the init-system calls it makes.

No init system is needed: the files are checked by parsing them (plistlib, configparser) and by
``systemd-analyze verify`` where it is installed; the commands run against stand-in ``launchctl``
and ``systemctl`` scripts first on PATH, which record their arguments, so a developer's real
user services are never touched. One test runs the generated command line itself and stops it
the way the init system would.
"""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from mlx_serve.cli import main
from mlx_serve.service import (LABEL, UNIT_NAME, program_arguments, render_plist, render_unit, service_path,
                               spec_for)
from support import TEST_ENV, free_port

FAKE_TOOL = """#!/bin/sh
# Stand-in for launchctl / systemctl: records its arguments, answers like the real one would.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$*" in
  *show-environment*) if [ -n "$FAKE_NO_BUS" ]; then echo "Failed to connect to bus: No medium found" >&2; exit 1; fi ;;
  print*) exit "${FAKE_PRINT_RC:-113}" ;;
  *status*) exit 3 ;;
esac
exit 0
"""


def _config(tmp: Path, name: str = "models.yaml", **server: Any) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "server": {"state_dir": str(tmp / "state"), "port": free_port(), **server},
        "models": [{"name": "chat", "type": "text", "path": "mlx-community/not-downloaded"}],
    }))
    return path


class Home:
    """A temporary HOME with stand-in launchctl and systemctl first on PATH."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.home.mkdir()
        self.bin = tmp / "fake-bin"
        self.bin.mkdir()
        for tool in ("launchctl", "systemctl"):
            script = self.bin / tool
            script.write_text(FAKE_TOOL)
            script.chmod(0o755)
        self.log = tmp / "calls.log"
        self.log.touch()
        self.env: dict[str, str | None] = {
            "HOME": str(self.home), "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_LOG": str(self.log), "FAKE_NO_BUS": None, "FAKE_PRINT_RC": None,
            "MLX_SERVE_SERVICE_PLATFORM": None, "MLX_SERVE_HOME": None,
        }

    def run(self, *args: str, **env: str | None) -> Result:
        return CliRunner().invoke(main, ["service", *args], env={**self.env, **env}, catch_exceptions=False)

    def calls(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return lines


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


# --- the files ----------------------------------------------------------------------------------

def test_plist_is_a_launchd_agent_running_start_in_the_foreground(tmp_path: Path) -> None:
    config = _config(tmp_path)
    spec = spec_for(config, tmp_path / "state", shutdown_grace=30, stop_timeout=10, environ={"PATH": "/usr/bin"})
    plist = plistlib.loads(render_plist(spec))
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [sys.executable, "-m", "mlx_serve.cli", "start", "--config",
                                         str(config.resolve())]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash, not after a clean stop
    log_dir = (tmp_path / "state" / "logs").resolve()
    assert Path(plist["StandardOutPath"]).parent == log_dir
    assert Path(plist["StandardErrorPath"]).parent == log_dir
    assert plist["ExitTimeOut"] > 40  # time for shutdown_grace + stop_timeout before SIGKILL
    assert plist["EnvironmentVariables"]["PATH"].split(":")[:2] == [str(Path(sys.executable).parent), "/usr/bin"]


def _unit_sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # unit keys are case-sensitive
    parser.read_string(text)
    return parser


def _unescape(word: str) -> str:
    return word.replace("$$", "$").replace("%%", "%")


def test_unit_runs_start_in_the_foreground_and_restarts_only_on_failure(tmp_path: Path) -> None:
    # A path that needs every kind of escaping a unit file has: a space, a specifier, a variable.
    config = _config(tmp_path / "my models", name="100%$HOME.yaml")
    spec = spec_for(config, tmp_path / "state", shutdown_grace=30, stop_timeout=10,
                    environ={"PATH": "/usr/bin", "HF_HOME": "/data/hf cache", "OTHER": "not carried"})
    unit = _unit_sections(render_unit(spec))
    service = unit["Service"]
    assert [_unescape(w) for w in shlex.split(service["ExecStart"])] == program_arguments(spec)
    assert program_arguments(spec)[-1] == str(config.resolve())
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # the router stops its own workers
    assert int(service["TimeoutStopSec"]) > 40
    assert unit["Install"]["WantedBy"] == "default.target"
    environment = [shlex.split(line.split("=", 1)[1])[0] for line in render_unit(spec).splitlines()
                   if line.startswith("Environment=")]
    assert "HF_HOME=/data/hf cache" in environment
    assert not any(e.startswith("OTHER=") for e in environment)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt package systemd); the unit is still checked "
                           "with configparser by the test above")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    config = _config(tmp_path / "my models", name="100%$HOME.yaml")
    spec = spec_for(config, tmp_path / "state", shutdown_grace=30, stop_timeout=10, environ={"PATH": "/usr/bin"})
    unit = tmp_path / "units" / UNIT_NAME
    unit.parent.mkdir()
    unit.write_text(render_unit(spec))
    ok = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and UNIT_NAME not in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    # The check has teeth: a misspelt key is only a warning (exit 0), and the warning names the unit.
    unit.write_text(render_unit(spec).replace("KillMode=", "KillMod="))
    bad = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "KillMod" in bad.stdout + bad.stderr and UNIT_NAME in bad.stdout + bad.stderr


def test_the_generated_command_serves_and_a_sigterm_stop_exits_0(tmp_path: Path) -> None:
    """What the init system runs works, and its stop signal ends it cleanly (so it is not restarted)."""
    port = free_port()
    config = _config(tmp_path, port=port, runtime_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"svc-{port}"))
    spec = spec_for(config, tmp_path / "state", shutdown_grace=30, stop_timeout=10, environ=dict(os.environ))
    plist = plistlib.loads(render_plist(spec))
    proc = subprocess.Popen(plist["ProgramArguments"], cwd=plist["WorkingDirectory"],
                            env={**TEST_ENV, **plist["EnvironmentVariables"]},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service command did not come up"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- the commands -------------------------------------------------------------------------------

def test_install_no_start_writes_the_unit_and_uninstall_removes_it(home: Home, tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = home.run("--platform", "linux", "install", "--config", str(config), "--no-start")
    assert result.exit_code == 0, result.output
    unit = home.home / ".config" / "systemd" / "user" / UNIT_NAME
    assert unit == service_path("linux", home.home)
    assert str(config.resolve()) in unit.read_text()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o600
    assert "systemctl --user daemon-reload" in result.output  # says how to start it
    assert home.calls() == []  # --no-start: the init system was not touched

    result = home.run("--platform", "linux", "uninstall")
    assert result.exit_code == 0, result.output
    assert not unit.exists()
    assert "systemctl --user disable --now mlx-serve.service" in home.calls()


def test_linux_install_enables_and_starts_and_the_controls_call_systemctl(home: Home, tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = home.run("--platform", "linux", "install", "--config", str(config))
    assert result.exit_code == 0, result.output
    calls = [c for c in home.calls() if "show-environment" not in c]
    assert calls == ["systemctl --user daemon-reload", f"systemctl --user enable {UNIT_NAME}",
                     f"systemctl --user restart {UNIT_NAME}"]
    for action in ("start", "stop"):
        assert home.run("--platform", "linux", action).exit_code == 0
        assert home.calls()[-1] == f"systemctl --user {action} {UNIT_NAME}"
    status = home.run("--platform", "linux", "status")
    assert status.exit_code == 3  # systemctl's "not running", passed through
    assert home.calls()[-1] == f"systemctl --user status --no-pager {UNIT_NAME}"


def test_linux_without_a_user_manager_says_so_and_prints_the_command(home: Home, tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = home.run("--platform", "linux", "install", "--config", str(config), FAKE_NO_BUS="1")
    assert result.exit_code == 0, result.output
    assert "cannot reach a user service manager" in result.output
    assert f"systemctl --user enable {UNIT_NAME}" in result.output
    assert (home.home / ".config" / "systemd" / "user" / UNIT_NAME).exists()
    assert [c for c in home.calls() if "show-environment" not in c] == []
    start = CliRunner().invoke(main, ["service", "--platform", "linux", "start"], env={**home.env, "FAKE_NO_BUS": "1"})
    assert start.exit_code == 1
    assert f"systemctl --user start {UNIT_NAME}" in start.output


def test_darwin_install_bootstraps_the_agent_and_uninstall_boots_it_out(home: Home, tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = home.run("--platform", "darwin", "install", "--config", str(config))
    assert result.exit_code == 0, result.output
    plist_path = home.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["ProgramArguments"][-3:] == ["start", "--config", str(config.resolve())]
    assert Path(plist["StandardOutPath"]).parent == (tmp_path / "state" / "logs").resolve()
    uid = os.getuid()
    assert home.calls() == [f"launchctl print gui/{uid}/{LABEL}", f"launchctl bootstrap gui/{uid} {plist_path}"]

    result = home.run("--platform", "darwin", "uninstall", FAKE_PRINT_RC="0")  # launchd has it loaded
    assert result.exit_code == 0, result.output
    assert f"launchctl bootout gui/{uid}/{LABEL}" in home.calls()
    assert not plist_path.exists()


def test_install_refuses_a_broken_config_and_writes_nothing(home: Home, tmp_path: Path) -> None:
    broken = tmp_path / "models.yaml"
    broken.write_text("server: {port: 99999}\nmodels: []\n")
    result = CliRunner().invoke(main, ["service", "--platform", "linux", "install", "--config", str(broken)],
                                env=home.env)
    assert result.exit_code == 1
    assert "no service was installed" in result.output and "port" in result.output
    assert not service_path("linux", home.home).exists()
    insecure = _config(tmp_path / "open", host="0.0.0.0")
    result = CliRunner().invoke(main, ["service", "--platform", "linux", "install", "--config", str(insecure)],
                                env=home.env)
    assert result.exit_code == 1 and "API key" in result.output
    assert not service_path("linux", home.home).exists()
