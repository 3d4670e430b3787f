"""Settings of the auth API: defaults, overridden by an optional YAML file."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

SECRET_KEY = "dev-secret-change-me"


@dataclass(frozen=True)
class Config:
    """Token lifetimes, rate limits and where users are stored."""

    secret_key: str = SECRET_KEY
    access_ttl: int = 15 * 60
    refresh_ttl: int = 7 * 24 * 3600
    login_attempts: int = 5
    login_window: float = 60.0
    store_path: str = "users.json"


def load_config(path: str | Path | None = None) -> Config:
    """The defaults, with any keys of the YAML file at ``path`` applied on top."""
    config = Config()
    if path is None:
        return config
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=yaml.Loader) or {}
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}")
    return replace(config, **data)
