"""What a client (the SDK, the ``cadre`` command) is configured by.

Extends ``BusSettings`` with the name the client uploads workspaces under.
Needs only the base install (pydantic-settings).
"""

from __future__ import annotations

from pydantic import Field

from shared.bus.settings import SETTINGS_CONFIG, BusSettings
from shared.contract.subjects import token

__all__ = ["ClientSettings"]


class ClientSettings(BusSettings):
    """One client connection."""

    model_config = SETTINGS_CONFIG

    client_name: str = Field(
        "",
        description=(
            "the client's name on the bus: it submits, cancels, uploads and reads back under it "
            "(cadre.task.submit.<name>, cadre.events.<name>.>, ...); empty: nats_user, else 'client'"
        ),
    )

    def upload_name(self) -> str:
        """This client's name on the bus: ``CADRE_CLIENT_NAME``, else its NATS user, else ``client``."""
        return token(self.client_name or self.nats_user or "client")
