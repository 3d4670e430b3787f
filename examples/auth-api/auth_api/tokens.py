"""JWT access and refresh tokens (HS256), with refresh-token rotation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import jwt

# the OAuth 2.0 token type of the pairs this service issues
SCHEME = "Bearer"


class TokenError(Exception):
    """A token that is invalid, expired, of the wrong kind or already used."""


class TokenService:
    """Issues and checks token pairs; a refresh token can be used only once."""

    def __init__(
        self,
        secret: str,
        access_ttl: int,
        refresh_ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.clock = clock
        self._used_refresh: set[str] = set()

    def _encode(self, username: str, kind: str, ttl: int) -> str:
        issued = int(self.clock())
        claims = {
            "sub": username,
            "kind": kind,
            "iat": issued,
            "exp": issued + ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def issue_pair(self, username: str) -> dict[str, str | int]:
        """A new access token and refresh token for ``username``."""
        return {
            "access_token": self._encode(username, "access", self.access_ttl),
            "refresh_token": self._encode(username, "refresh", self.refresh_ttl),
            "token_type": SCHEME,
            "expires_in": self.access_ttl,
        }

    def decode(self, token: str, kind: str) -> dict:
        """The claims of a valid, unexpired token of the given kind."""
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        if claims.get("kind") != kind:
            raise TokenError(f"not an {kind} token")
        return claims

    def refresh(self, refresh_token: str) -> dict[str, str | int]:
        """Trade a refresh token for a new pair; the old one stops working."""
        claims = self.decode(refresh_token, "refresh")
        if claims["jti"] in self._used_refresh:
            raise TokenError("refresh token already used")
        self._used_refresh.add(claims["jti"])
        return self.issue_pair(claims["sub"])
