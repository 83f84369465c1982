"""Reading a YAML mapping file with errors that say what is wrong (no heavy imports: the SDK uses it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: str | Path, error: type[Exception] = ValueError, prefix: str = "") -> dict[str, Any]:
    """The top-level mapping of a YAML file; ``error`` (with ``prefix``) for a missing file,
    bad YAML or a top level that is not a mapping. An empty file is an empty mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise error(f"{prefix}{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise error(f"{prefix}{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{prefix}{path}: the top level must be a mapping")
    return data
