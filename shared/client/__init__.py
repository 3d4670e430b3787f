"""The client SDK: ``from shared.client import CadreClient``.

Needs only the base install (nats-py, msgspec, pydantic-settings). The ``cadre``
command lives in ``shared.client.cli`` and is not imported from here.
"""

from shared.client.sdk import (
    FINAL_KINDS,
    OPERATOR_LOGIN,
    ArtifactCorrupt,
    CadreClient,
    Download,
    NoDeployment,
    NoService,
    NoWorkspace,
    PermissionDenied,
    ServiceInfo,
)

__all__ = [
    "CadreClient",
    "ServiceInfo",
    "Download",
    "FINAL_KINDS",
    "NoService",
    "NoDeployment",
    "NoWorkspace",
    "ArtifactCorrupt",
    "PermissionDenied",
    "OPERATOR_LOGIN",
]
