"""Logging set-up: one structured line per event, to stderr."""

from __future__ import annotations

import logging

__all__ = ["setup_logging"]


def setup_logging(name: str, level: str = "INFO") -> None:
    """Configure the root logger for a service process."""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
