"""The LiteLLM configurations in docs/litellm.md, read by the tests so that what the docs show is what is tested."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

DOC = Path(__file__).resolve().parent.parent / "docs" / "litellm.md"
_YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_configs() -> list[dict[str, Any]]:
    """Every LiteLLM config.yaml in the doc (the YAML blocks with a model_list), in order."""
    blocks = [yaml.safe_load(b) for b in _YAML_BLOCK.findall(DOC.read_text())]
    return [b for b in blocks if isinstance(b, dict) and "model_list" in b]


def single_host_config() -> dict[str, Any]:
    """The Docker config.yaml: several models on one mlx-serve."""
    return doc_configs()[0]


def multi_host_config() -> dict[str, Any]:
    """The "More than one Mac" config: one model name on several mlx-serve hosts."""
    return doc_configs()[1]


def pointed_at(config: dict[str, Any], api_bases: list[str]) -> list[dict[str, Any]]:
    """The config's model_list with each distinct api_base replaced, in order of appearance, by one of ``api_bases``."""
    model_list = copy.deepcopy(config["model_list"])
    seen: list[str] = []
    for deployment in model_list:
        base = deployment["litellm_params"]["api_base"]
        if base not in seen:
            seen.append(base)
    assert len(seen) == len(api_bases), f"the doc's config has {len(seen)} hosts: {seen}"
    mapping = dict(zip(seen, api_bases))
    for deployment in model_list:
        deployment["litellm_params"]["api_base"] = mapping[deployment["litellm_params"]["api_base"]]
    return model_list


def served_name(deployment: dict[str, Any]) -> str:
    """The model name mlx-serve knows the deployment by: ``openai/<name>``."""
    provider, _, name = deployment["litellm_params"]["model"].partition("/")
    assert provider == "openai", deployment
    return name
