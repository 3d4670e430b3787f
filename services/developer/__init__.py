"""The developer agent service."""
