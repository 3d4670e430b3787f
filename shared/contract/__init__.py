"""The wire contract: every message, subject, error and schema Cadre services and clients share.

Pure types and functions; imports nothing else of Cadre (checked by ``mypy --strict``).
"""
