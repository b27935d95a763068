"""params.yaml: the one place every knob lives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from wsss.errors import ConfigError


def params_path() -> Path:
    """WSSS_PARAMS, else params.yaml in the project root (DVC_ROOT under `dvc repro`)."""
    from wsss.tracking.runs import project_root

    return Path(os.environ.get("WSSS_PARAMS") or project_root() / "params.yaml")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else params_path()
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the project root or set WSSS_PARAMS)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        value = params[name]
    except KeyError:
        raise ConfigError(f"params.yaml has no `{name}` section") from None
    return value or {}
