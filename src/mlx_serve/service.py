"""``mlx-serve service``: run the router at login, as a launchd agent (macOS) or a systemd user unit (Linux).

Both run ``<this interpreter> -m mlx_serve.cli start --config <absolute path>`` in the foreground
and let the init system restart it if it fails. A clean stop (SIGTERM: the router finishes the
requests in flight, stops its workers and exits 0) is not restarted, so ``mlx-serve stop`` and
``service stop`` both stay stopped.

The file contents come from pure functions (:func:`render_plist`, :func:`render_unit`) of a
:class:`ServiceSpec`, and the init-system calls from :func:`control_commands`, so both can be
checked on any machine; the click commands below only glue them to the file system and to
``launchctl`` / ``systemctl --user``.
"""

from __future__ import annotations

import math
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click

LABEL = "dev.mlx-serve"
UNIT_NAME = "mlx-serve.service"
PLATFORMS = ("darwin", "linux")
PLATFORM_ENV = "MLX_SERVE_SERVICE_PLATFORM"
LOG_NAME = "service.log"
# Extra seconds on top of shutdown_grace + stop_timeout before the init system sends SIGKILL.
STOP_MARGIN_S = 15


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the service files depend on; built from the config by :func:`spec_for`."""

    config_path: Path
    python: str
    log_dir: Path
    working_dir: Path
    stop_timeout_s: int
    environment: Mapping[str, str] = field(default_factory=dict)
    label: str = LABEL

    @property
    def log_path(self) -> Path:
        return self.log_dir / LOG_NAME


def program_arguments(spec: ServiceSpec) -> list[str]:
    """The command both init systems run: the router in the foreground with this config."""
    return [spec.python, "-m", "mlx_serve.cli", "start", "--config", str(spec.config_path)]


def render_plist(spec: ServiceSpec) -> bytes:
    """A launchd agent for ``~/Library/LaunchAgents/<label>.plist``."""
    return plistlib.dumps({
        "Label": spec.label,
        "ProgramArguments": program_arguments(spec),
        "WorkingDirectory": str(spec.working_dir),
        "EnvironmentVariables": dict(spec.environment),
        "RunAtLoad": True,
        # Restart after a crash or a failed start, not after a clean stop (exit 0 on SIGTERM).
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": str(spec.log_path),
        "StandardErrorPath": str(spec.log_path),
        # launchd's default is 20 s between SIGTERM and SIGKILL: too short for a graceful drain.
        "ExitTimeOut": spec.stop_timeout_s,
    })


def render_unit(spec: ServiceSpec) -> str:
    """A systemd user unit for ``~/.config/systemd/user/mlx-serve.service``."""
    environment = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in spec.environment.items())
    return (
        "[Unit]\n"
        "Description=mlx-serve: local MLX models behind an OpenAI-compatible API\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_systemd_quote(a, expand=True) for a in program_arguments(spec))}\n"
        f"WorkingDirectory={_systemd_escape(str(spec.working_dir))}\n"
        f"{environment}"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "KillSignal=SIGTERM\n"
        # SIGTERM to the router only: it drains requests and stops its workers itself; whatever
        # is left after TimeoutStopSec is killed.
        "KillMode=mixed\n"
        f"TimeoutStopSec={spec.stop_timeout_s}\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


_PLAIN = re.compile(r"^[A-Za-z0-9_./:=@+,-]+$")


def _systemd_escape(text: str) -> str:
    """``%`` starts a specifier in unit files; ``%%`` is a literal percent sign."""
    return text.replace("%", "%%")


def _systemd_quote(arg: str, expand: bool = False) -> str:
    """One word for a unit file line, double-quoted when needed (systemd.syntax(7) quoting).

    ``expand``: the line expands ``$VAR`` (ExecStart=), so a literal ``$`` is written ``$$``.
    """
    text = _systemd_escape(arg)
    if expand:
        text = text.replace("$", "$$")
    if _PLAIN.match(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def service_path(platform: str, home: Path, label: str = LABEL) -> Path:
    """Where the service file goes for this user."""
    if platform == "darwin":
        return home / "Library" / "LaunchAgents" / f"{label}.plist"
    return home / ".config" / "systemd" / "user" / UNIT_NAME


def render(platform: str, spec: ServiceSpec) -> bytes:
    """The service file's bytes for ``platform`` ("darwin" or "linux")."""
    return render_plist(spec) if platform == "darwin" else render_unit(spec).encode()


def control_commands(platform: str, action: str, path: Path, uid: int, label: str = LABEL,
                     loaded: bool = False) -> list[list[str]]:
    """The init-system commands for ``action`` (install, uninstall, start, stop, status), in order.

    ``loaded`` (macOS): whether launchd already has the agent, which decides between bootstrap
    and kickstart, and whether a reinstall must boot the old one out first.
    """
    if platform == "darwin":
        domain = f"gui/{uid}"
        target = f"{domain}/{label}"
        bootstrap = ["launchctl", "bootstrap", domain, str(path)]
        bootout = ["launchctl", "bootout", target]
        return {
            "install": [bootout, bootstrap] if loaded else [bootstrap],
            "uninstall": [bootout] if loaded else [],
            "start": [["launchctl", "kickstart", target]] if loaded else [bootstrap],
            # A bootout sends SIGTERM (SIGKILL after ExitTimeOut) and keeps it stopped until the next login.
            "stop": [bootout] if loaded else [],
            "status": [["launchctl", "print", target]],
        }[action]
    unit = ["systemctl", "--user"]
    return {
        # restart, not start: a reinstall with another config must take effect.
        "install": [unit + ["daemon-reload"], unit + ["enable", UNIT_NAME], unit + ["restart", UNIT_NAME]],
        "uninstall": [unit + ["disable", "--now", UNIT_NAME]],
        "start": [unit + ["start", UNIT_NAME]],
        "stop": [unit + ["stop", UNIT_NAME]],
        "status": [unit + ["status", "--no-pager", UNIT_NAME]],
    }[action]


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def init_system_problem(platform: str, which: Callable[[str], str | None] = shutil.which,
                        run: Runner = subprocess.run) -> str | None:
    """Why the init system cannot be driven from here, or None when it can."""
    tool = "launchctl" if platform == "darwin" else "systemctl"
    if which(tool) is None:
        return f"{tool} was not found on PATH"
    if platform == "darwin":
        return None
    try:  # a container or an SSH session without a user manager has systemctl but no `--user` bus
        probe = run(["systemctl", "--user", "show-environment"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemctl --user did not answer ({e})"
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        return f"systemctl --user cannot reach a user service manager ({reason[-1] if reason else 'no reason given'})"
    return None


# Variables read by mlx-serve or Hugging Face that change what the service does: carried into it
# so that it behaves as `mlx-serve start` does in this shell. The file is written mode 0600.
_CARRIED = re.compile(r"^(MLX_SERVE_.*|MLX_API_KEY|HF_.*|HUGGINGFACE_.*|TRANSFORMERS_OFFLINE)$")


def service_environment(environ: Mapping[str, str], python: str) -> dict[str, str]:
    """PATH (the interpreter's directory first) and the variables mlx-serve and Hugging Face read."""
    path = [str(Path(python).parent)] + environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    env = {"PATH": os.pathsep.join(dict.fromkeys(p for p in path if p))}
    env.update({k: v for k, v in sorted(environ.items())
                if _CARRIED.match(k) and k != "MLX_SERVE_CONFIG" and k != PLATFORM_ENV})
    return env


def spec_for(config_path: Path, state_dir: Path, shutdown_grace: float, stop_timeout: float,
             environ: Mapping[str, str], python: str = sys.executable) -> ServiceSpec:
    """The service for a config: its paths made absolute, the stop timeout from its graceful-stop settings."""
    config_path = config_path.expanduser().resolve()
    return ServiceSpec(
        config_path=config_path,
        python=python,
        log_dir=state_dir.expanduser().resolve() / "logs",
        working_dir=config_path.parent,
        stop_timeout_s=math.ceil(shutdown_grace + stop_timeout) + STOP_MARGIN_S,
        environment=service_environment(environ, python),
    )


# --- the click commands -------------------------------------------------------------------------

def _default_platform() -> str:
    if sys.platform == "darwin":
        return "darwin"
    if sys.platform.startswith("linux"):
        return "linux"
    raise click.ClickException(f"mlx-serve service supports macOS (launchd) and Linux (systemd), not {sys.platform}")


def _platform(ctx: click.Context) -> str:
    return ctx.obj["platform"] or _default_platform()


def _path(ctx: click.Context) -> Path:
    return service_path(_platform(ctx), Path.home())


def _manual(platform: str, action: str, path: Path) -> str:
    commands = control_commands(platform, action, path, os.getuid())
    return " && ".join(shlex.join(c) for c in commands)


def _run(commands: list[list[str]], allow_failure: bool = False) -> None:
    for argv in commands:
        proc = subprocess.run(argv, capture_output=True, text=True)
        # launchd finishes a bootout after launchctl returns; a bootstrap right after it can fail
        # ("Bootstrap failed: 5: Input/output error") until the old job is gone.
        deadline = time.monotonic() + 10
        while proc.returncode != 0 and argv[:2] == ["launchctl", "bootstrap"] and time.monotonic() < deadline:
            time.sleep(0.5)
            proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 and not allow_failure:
            detail = (proc.stderr or proc.stdout).strip()
            raise click.ClickException(f"`{shlex.join(argv)}` failed (exit {proc.returncode})"
                                       + (f":\n{detail}" if detail else ""))


def _launchd_loaded(label: str = LABEL) -> bool:
    return subprocess.run(["launchctl", "print", f"gui/{os.getuid()}/{label}"],
                          capture_output=True).returncode == 0


def _commands(platform: str, action: str, path: Path) -> list[list[str]]:
    loaded = platform == "darwin" and _launchd_loaded()
    return control_commands(platform, action, path, os.getuid(), loaded=loaded)


@click.group()
@click.option("--platform", type=click.Choice(PLATFORMS), envvar=PLATFORM_ENV, default=None, hidden=True,
              help="Write the files of this platform (for tests); default: this machine's.")
@click.pass_context
def service(ctx: click.Context, platform: str | None) -> None:
    """Run mlx-serve at login: a launchd agent (macOS) or a systemd user unit (Linux)."""
    ctx.obj = {"platform": platform}


@service.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="models.yaml the service starts with (default: as `mlx-serve start`). Stored as an absolute path.")
@click.option("--no-start", is_flag=True, help="Only write the service file; do not load or start it.")
@click.pass_context
def install(ctx: click.Context, config_path: Path | None, no_start: bool) -> None:
    """Write the service file and start the service (it then starts at every login)."""
    from mlx_serve.cli import LOOPBACK, default_config_path
    from mlx_serve.config import ConfigError, load_config

    platform = _platform(ctx)
    source = config_path or default_config_path()
    try:  # a broken config would only show up as a restart loop in the service log
        config = load_config(source)
    except ConfigError as e:
        raise click.ClickException(f"invalid configuration, no service was installed:\n{e}") from None
    server = config.server
    if server.host not in LOOPBACK and not server.api_key:
        raise click.ClickException(f"{source} listens on {server.host} without an API key, which `mlx-serve start` "
                                   f"refuses; set server.api_key in it first")
    spec = spec_for(source, server.state_path, server.shutdown_grace, server.stop_timeout, os.environ)
    path = _path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    # 0600: the environment it carries may hold an API key or a Hugging Face token.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(render(platform, spec))
    os.chmod(path, 0o600)
    click.echo(f"wrote {path}")
    click.echo(f"  runs: {shlex.join(program_arguments(spec))}")
    carried = [k for k in spec.environment if k != "PATH"]
    if carried:
        click.echo(f"  with this shell's {', '.join(carried)}")
    logs = spec.log_path if platform == "darwin" else f"journalctl --user -u {UNIT_NAME}"
    click.echo(f"  logs: {logs}")
    if no_start:
        click.echo(f"not started (--no-start); to start it: {_manual(platform, 'install', path)}")
        return
    problem = init_system_problem(platform)
    if problem is not None:
        click.echo(f"{problem}, so the service was not started. Where a user service manager runs, start it "
                   f"with:\n  {_manual(platform, 'install', path)}")
        return
    _run(_commands(platform, "install", path))
    click.echo("started; it will start again at each login. Check it with `mlx-serve service status`.")
    if platform == "linux":
        click.echo("To keep it running after you log out (and start it at boot): loginctl enable-linger $USER")


@service.command()
@click.pass_context
def uninstall(ctx: click.Context) -> None:
    """Stop the service and remove its file."""
    platform = _platform(ctx)
    path = _path(ctx)
    if not path.exists():
        click.echo(f"no service installed ({path} does not exist)")
        return
    problem = init_system_problem(platform)
    if problem is None:
        _run(_commands(platform, "uninstall", path), allow_failure=True)  # it may not be running
    path.unlink()
    if platform == "linux" and problem is None:
        _run([["systemctl", "--user", "daemon-reload"]], allow_failure=True)
    click.echo(f"removed {path}" + (f" ({problem}: if it was running, stop it yourself)" if problem else ""))


def _control(ctx: click.Context, action: str) -> bool:
    """Run ``action``'s commands; False when there was nothing to do (launchd: the agent is not loaded)."""
    platform = _platform(ctx)
    path = _path(ctx)
    if not path.exists():
        raise click.ClickException(f"no service installed ({path} does not exist); run `mlx-serve service install`")
    problem = init_system_problem(platform)
    if problem is not None:
        raise click.ClickException(f"{problem}; where a user service manager runs: {_manual(platform, action, path)}")
    commands = _commands(platform, action, path)
    _run(commands)
    return bool(commands)


@service.command("start")
@click.pass_context
def start_service(ctx: click.Context) -> None:
    """Start the installed service."""
    _control(ctx, "start")
    click.echo("started")


@service.command("stop")
@click.pass_context
def stop_service(ctx: click.Context) -> None:
    """Stop the service gracefully (it stays installed; on macOS it starts again at the next login)."""
    click.echo("stopped" if _control(ctx, "stop") else "it was not running")


@service.command("status")
@click.pass_context
def status_service(ctx: click.Context) -> None:
    """Show what the init system says about the service."""
    platform = _platform(ctx)
    path = _path(ctx)
    click.echo(f"service file: {path} ({'installed' if path.exists() else 'not installed'})")
    if not path.exists():
        ctx.exit(3)
    problem = init_system_problem(platform)
    if problem is not None:
        raise click.ClickException(f"{problem}; where a user service manager runs: "
                                   f"{_manual(platform, 'status', path)}")
    # Passed through as is: launchctl / systemctl say it better, and their exit status means "not running".
    rc = 0
    for argv in control_commands(platform, "status", path, os.getuid()):
        rc = subprocess.run(argv).returncode
    ctx.exit(rc)
