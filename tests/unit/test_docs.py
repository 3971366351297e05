"""docs/configuration.md is generated from the schema and current; docs/api.md covers every route and metric."""

from __future__ import annotations

import re
from pathlib import Path

from mlx_serve.config import MODEL_KEYS, SERVER_KEYS
from mlx_serve.docgen import COMMAND, render
from mlx_serve.options import OPTIONS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level (not in code blocks)."""
    level = len(heading.split(" ")[0])
    lines = text[text.index(heading + "\n") + len(heading) + 1:].split("\n")
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(rf"#{{1,{level}}} ", line):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def _first_column(section: str) -> list[str]:
    """The backquoted names in the first column of the Markdown table(s) of ``section``."""
    return re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)


def test_configuration_md_is_the_generated_one() -> None:
    committed = (DOCS / "configuration.md").read_text()
    assert committed == render(), f"docs/configuration.md is stale: run `{COMMAND}`"


def test_configuration_md_lists_every_key_the_schema_accepts() -> None:
    text = (DOCS / "configuration.md").read_text()
    assert _first_column(_section(text, "## `server:`")) == [k.name for k in SERVER_KEYS]
    assert _first_column(_section(text, "## `models:`")) == [k.name for k in MODEL_KEYS]
    for key in SERVER_KEYS:
        for var in key.env:
            assert f"`{var}`" in text
    options = _section(text, "## Worker options (`options:`)")
    for kind, table in OPTIONS.items():
        assert _first_column(_section(options, f"### `{kind}`")) == list(table), kind


def test_configuration_md_shows_defaults_from_the_schema() -> None:
    text = (DOCS / "configuration.md").read_text()
    port = next(k for k in SERVER_KEYS if k.name == "port")
    assert re.search(rf"^\| `port` \| `{port.default}` \| `MLX_SERVE_PORT` \|", text, re.MULTILINE)
    max_tokens = OPTIONS["text"]["max_tokens"][1]
    assert re.search(rf"^\| `max_tokens` \| integer \| `{max_tokens}` \|", _section(text, "### `text`"), re.MULTILINE)


def _app_routes() -> set[tuple[str, str]]:
    from mlx_serve.app import create_app
    from mlx_serve.config import parse_config

    app = create_app(parse_config({"models": []}))
    routes = set()
    for route in app.routes:
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                routes.add((method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)))
    return routes


def test_api_md_documents_every_route_with_a_curl_example() -> None:
    text = (DOCS / "api.md").read_text()
    routes = _app_routes()
    assert ("GET", "/metrics") in routes and ("GET", "/dashboard") in routes
    missing, without_example = [], []
    for method, path in sorted(routes):
        heading = f"### `{method} {path}`"
        if heading + "\n" not in text:
            missing.append(heading)
            continue
        example = re.search(r"```bash\n(.*?)```", _section(text, heading), re.DOTALL)
        bare = path.split("{")[0].rstrip("/")
        if example is None or "curl" not in example.group(1) or bare not in example.group(1):
            without_example.append(heading)
    assert missing == [], "routes missing from docs/api.md"
    assert without_example == [], "routes without a curl example in docs/api.md"


def test_api_md_lists_every_metric_family() -> None:
    from mlx_serve.metrics import Metrics

    text = (DOCS / "api.md").read_text()
    families = {f.name: f.type for f in Metrics().registry.collect()}
    assert "mlx_serve_requests" in families and "mlx_serve_model_evictions" in families
    for name, kind in families.items():
        if name.startswith("process_"):
            assert "`process_*`" in text
            continue
        shown = {"counter": f"{name}_total", "info": f"{name}_info"}.get(kind, name)
        assert f"`{shown}`" in text, f"metric {shown} is not in docs/api.md"
