"""Cadre's common library: protocol, subjects, settings, bus, agent runtime, brains, client SDK, CLI."""

__version__ = "0.1.0"
