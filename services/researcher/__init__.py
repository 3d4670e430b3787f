"""The researcher agent service."""
