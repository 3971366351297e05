"""The ``mlx-serve`` command line: init, start, stop, status, ps, load, unload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from mlx_serve import cli_ops
from mlx_serve.config import Config, ConfigError, load_config
from mlx_serve.durations import format_size
from mlx_serve.logfiles import ROUTER_LOG_BACKUPS, ROUTER_LOG_MAX_BYTES, rotate_if_larger
from mlx_serve.service import service

DEFAULT_CONFIG_ENV = "MLX_SERVE_CONFIG"
TEMPLATE = Path(__file__).with_name("models.example.yaml")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def default_config_path() -> Path:
    env = os.environ.get(DEFAULT_CONFIG_ENV)
    if env:
        return Path(env)
    local = Path("models.yaml")
    return local if local.exists() else Path("~/.mlx-serve/models.yaml").expanduser()


config_option = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                             default=None, help=f"models.yaml to use (env {DEFAULT_CONFIG_ENV}; default ./models.yaml, "
                                                f"else ~/.mlx-serve/models.yaml).")
host_option = click.option("--host", default=None, help="Address to listen on / reach (env MLX_SERVE_HOST).")
port_option = click.option("--port", type=int, default=None, help="Port (env MLX_SERVE_PORT; default 8095).")


def _load(config_path: Path | None, host: str | None = None, port: int | None = None) -> Config:
    path = config_path or default_config_path()
    try:
        return load_config(path, overrides={"host": host, "port": port})
    except ConfigError as e:
        raise click.ClickException(f"invalid configuration, nothing was started:\n{e}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-serve")
def main() -> None:
    """mlx-serve: a local MLX model server with an OpenAI-compatible API."""


# --- init -------------------------------------------------------------------------------------

@main.command()
@click.option("--demo", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also build tiny random-weight demo models of every installed kind into DIR (no download).")
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing models.yaml.")
def init(demo_dir: Path | None, config_path: Path | None, force: bool) -> None:
    """Write a commented models.yaml (and, with --demo, tiny offline models it points at)."""
    target = config_path or Path("models.yaml")
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; pass --force to overwrite it or --config to write elsewhere")
    if demo_dir is None:
        target.write_text(TEMPLATE.read_text())
        click.echo(f"wrote {target}: edit the models list, then run `mlx-serve start --config {target}`")
        return
    from mlx_serve.demo import build_demo, demo_config_text

    click.echo(f"building demo models into {demo_dir} (no download) ...")
    result = build_demo(demo_dir)
    for name, reason in result.get("skipped", {}).items():
        click.echo(f"  skipped {name}: {reason}")
    if not result["models"]:
        raise click.ClickException("no demo model could be built: install a worker extra, e.g. "
                                   "pip install 'mlx-serve[all]'")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(demo_config_text(result["models"]))
    for m in result["models"]:
        click.echo(f"  {m['name']:<12} {m['type']:<10} {m['path']}")
    click.echo(f"wrote {target}.")
    click.secho("Note: demo models have random weights: they answer quickly, in gibberish. They exist to try and "
                "test the server offline; point models.yaml at real models for real answers.", fg="yellow")


# --- start / stop -----------------------------------------------------------------------------

@main.command()
@config_option
@host_option
@port_option
@click.option("--detach", "-d", is_flag=True, help="Run in the background (pidfile and log in the state dir).")
@click.option("--allow-insecure", is_flag=True, help="Allow a non-loopback bind without an API key.")
def start(config_path: Path | None, host: str | None, port: int | None, detach: bool, allow_insecure: bool) -> None:
    """Start the router (in the foreground unless --detach)."""
    config = _load(config_path, host, port)
    server = config.server
    if server.host not in LOOPBACK and not server.api_key:
        message = (f"refusing to listen on {server.host} without an API key: anyone on the network could use "
                   f"the models. Set server.api_key in {config.source} or MLX_SERVE_API_KEY, or pass "
                   f"--allow-insecure.")
        if not allow_insecure:
            raise click.ClickException(message)
        click.secho(f"warning: listening on {server.host} without an API key (--allow-insecure)", fg="red", err=True)
    pidfile = _pidfile(config)
    running = _read_pid(pidfile)
    if running is not None:
        raise click.ClickException(f"mlx-serve is already running on port {server.port} (pid {running}); "
                                   f"`mlx-serve stop` first")
    if detach:
        _start_detached(config, config_path or default_config_path(), host, port, allow_insecure)
        return
    _run_foreground(config, pidfile)


def _run_foreground(config: Config, pidfile: Path) -> None:
    import logging

    import uvicorn

    from mlx_serve.app import create_app

    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(json.dumps({"pid": os.getpid(), "host": config.server.host, "port": config.server.port,
                                   "config": str(config.source)}))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was there before; a no-op one makes a clean stop exit 0 (what service managers expect).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server_config = uvicorn.Config(app, host=config.server.host, port=config.server.port,
                                   log_level=config.server.log_level, access_log=False, backlog=2048,
                                   # longer than clients keep idle connections (httpx: 5 s), so a client
                                   # never reuses a connection the router is closing at that moment
                                   timeout_keep_alive=30,
                                   timeout_graceful_shutdown=max(1, int(config.server.shutdown_grace)))
    try:
        _phased_server()(server_config).run()
    finally:
        _remove_pidfile(pidfile, os.getpid())


def _phased_server() -> type:
    import uvicorn

    class PhasedServer(uvicorn.Server):
        """uvicorn, with one more phase at the start of a stop: queued requests fail with 503 at once.

        Then uvicorn stops accepting, lets requests in flight finish within shutdown_grace, and the
        app's lifespan stops the workers and removes the runtime directory.
        """

        async def shutdown(self, sockets: Any = None) -> None:
            self.config.app.state.scheduler.begin_shutdown()
            await super().shutdown(sockets)

    return PhasedServer


def _start_detached(config: Config, config_path: Path, host: str | None, port: int | None,
                    allow_insecure: bool) -> None:
    log_path = config.server.state_path / "logs" / "router.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate_if_larger(log_path, ROUTER_LOG_MAX_BYTES, ROUTER_LOG_BACKUPS)  # the router appends to it while it runs
    cmd = [sys.executable, "-m", "mlx_serve.cli", "start", "--config", str(config_path)]
    cmd += ["--host", host] if host else []
    cmd += ["--port", str(port)] if port else []
    cmd += ["--allow-insecure"] if allow_insecure else []
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = _base_url(config)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"mlx-serve exited at start (status {proc.returncode}); see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                click.echo(f"mlx-serve running on {url} (pid {proc.pid}); log: {log_path}")
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"mlx-serve did not answer on {url} within 30s; see {log_path}")


@main.command()
@config_option
@port_option
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for a graceful stop.")
def stop(config_path: Path | None, port: int | None, timeout: float) -> None:
    """Stop a running router gracefully (it stops its workers first)."""
    config = _load(config_path, port=port)
    pidfile = _pidfile(config)
    pid = _read_pid(pidfile)
    if pid is None:
        click.echo(f"mlx-serve is not running on port {config.server.port}")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            _remove_pidfile(pidfile, pid)
            click.echo(f"mlx-serve stopped (pid {pid})")
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    _remove_pidfile(pidfile, pid)
    click.echo(f"mlx-serve did not stop within {timeout:g}s and was killed (pid {pid})")


def _pidfile(config: Config) -> Path:
    return config.server.state_path / f"router-{config.server.port}.pid"


def _read_pid(pidfile: Path) -> int | None:
    """The pid of a live router from its pidfile; a stale pidfile is removed."""
    try:
        pid = int(json.loads(pidfile.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _alive(pid):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def _remove_pidfile(pidfile: Path, pid: int) -> None:
    try:
        if int(json.loads(pidfile.read_text())["pid"]) == pid:
            pidfile.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


# --- talking to a running router ----------------------------------------------------------------

def _base_url(config: Config) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def _client(config: Config, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {config.server.api_key}"} if config.server.api_key else {}
    return httpx.Client(base_url=_base_url(config), headers=headers, timeout=timeout)


def _call(config: Config, method: str, path: str, timeout: float = 10.0, **kwargs: Any) -> dict[str, Any]:
    try:
        with _client(config, timeout) as client:
            response = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise click.ClickException(f"mlx-serve is not running at {_base_url(config)} (start it with "
                                   f"`mlx-serve start`)") from None
    data = response.json() if response.content else {}
    if response.status_code >= 400:
        message = data.get("error", {}).get("message") if isinstance(data, dict) else response.text
        raise click.ClickException(f"{response.status_code}: {message}")
    return data


@main.command()
@config_option
@host_option
@port_option
def status(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Is the router up, and which models are loaded."""
    config = _load(config_path, host, port)
    health = _call(config, "GET", "/health")
    ps = _call(config, "GET", "/api/ps")
    click.echo(f"mlx-serve {health.get('version', '')} is up at {_base_url(config)}")
    _print_ps(ps, config)


@main.command()
@config_option
@host_option
@port_option
def ps(config_path: Path | None, host: str | None, port: int | None) -> None:
    """List the loaded models."""
    config = _load(config_path, host, port)
    _print_ps(_call(config, "GET", "/api/ps"), config)


def _print_ps(ps: dict[str, Any], config: Config) -> None:
    models = _call(config, "GET", "/v1/models").get("data", [])  # every configured model, with its state
    click.echo(cli_ops.format_status(ps, models))


@main.command()
@click.argument("name")
@click.option("--keep-alive", default=None, help="How long it stays loaded once idle ('10m', -1 = until unloaded).")
@config_option
@host_option
@port_option
def load(name: str, keep_alive: str | None, config_path: Path | None, host: str | None, port: int | None) -> None:
    """Load a model now and wait until it is ready."""
    config = _load(config_path, host, port)
    body: dict[str, Any] = {"model": name}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    result = _call(config, "POST", "/api/load", timeout=config.server.start_timeout + 30, json=body)
    model = result.get("model", {})
    click.echo(f"loaded {name} (pid {model.get('pid')}, {format_size(model.get('size') or 0)})")


@main.command()
@click.argument("name", required=False)
@config_option
@host_option
@port_option
def unload(name: str | None, config_path: Path | None, host: str | None, port: int | None) -> None:
    """Unload a model (or all) once their requests in flight finish."""
    config = _load(config_path, host, port)
    result = _call(config, "POST", "/api/unload", timeout=config.server.queue_timeout + 30,
                   json={"model": name} if name else {})
    unloaded = result.get("models", [])
    click.echo(f"unloaded {', '.join(unloaded)}" if unloaded else "nothing was loaded")


main.add_command(service)
main.add_command(cli_ops.logs)
main.add_command(cli_ops.pull)


if __name__ == "__main__":
    main()
