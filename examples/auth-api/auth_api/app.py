"""The HTTP API as a plain WSGI application (serve it with any WSGI server)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from auth_api.config import Config
from auth_api.passwords import hash_password, make_reset_token, verify_password
from auth_api.ratelimit import RateLimiter
from auth_api.store import UserStore
from auth_api.tokens import SCHEME, TokenError, TokenService

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class AuthApp:
    """Register, log in, refresh, who-am-I and password reset."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = UserStore(config.store_path)
        self.tokens = TokenService(
            config.secret_key, config.access_ttl, config.refresh_ttl
        )
        self.limiter = RateLimiter(config.login_attempts, config.login_window)
        # reset tokens are "mailed" to users: here they land in this outbox
        self.outbox: list[dict[str, str]] = []
        self.routes = {
            ("POST", "/register"): self.register,
            ("POST", "/login"): self.login,
            ("POST", "/refresh"): self.refresh,
            ("GET", "/me"): self.me,
            ("POST", "/password-reset/request"): self.reset_request,
            ("POST", "/password-reset/confirm"): self.reset_confirm,
        }

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        handler = self.routes.get(
            (environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"))
        )
        headers = [("Content-Type", "application/json")]
        try:
            if handler is None:
                raise HTTPError(HTTPStatus.NOT_FOUND, "no such endpoint")
            status, payload = handler(environ)
        except HTTPError as exc:
            status, payload = exc.status, {"error": exc.detail}
        body = (
            json.dumps(payload, sort_keys=True).encode("utf-8")
            if payload is not None
            else b""
        )
        if status == HTTPStatus.OK and environ["REQUEST_METHOD"] == "GET":
            etag = '"' + hashlib.md5(body).hexdigest() + '"'
            headers.append(("ETag", etag))
            if environ.get("HTTP_IF_NONE_MATCH") == etag:
                status, body = HTTPStatus.NOT_MODIFIED, b""
        start_response(f"{status.value} {status.phrase}", headers)
        return [body]

    @staticmethod
    def _json(environ: dict[str, Any], *names: str) -> dict[str, str]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            data = json.loads(environ["wsgi.input"].read(size) or b"{}")
        except ValueError as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "body must be JSON") from exc
        missing = [n for n in names if not isinstance(data.get(n), str) or not data[n]]
        if missing:
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, f"missing fields: {', '.join(missing)}"
            )
        return data

    def register(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict | None]:
        data = self._json(environ, "username", "password")
        if len(data["password"]) < 8:
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, "password must have at least 8 characters"
            )
        if self.store.get(data["username"]) is not None:
            raise HTTPError(HTTPStatus.CONFLICT, "username taken")
        self.store.put(data["username"], {"password": hash_password(data["password"])})
        return HTTPStatus.CREATED, {"username": data["username"]}

    def login(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict | None]:
        client = environ.get("REMOTE_ADDR", "unknown")
        if not self.limiter.allow(client):
            raise HTTPError(
                HTTPStatus.TOO_MANY_REQUESTS, "too many login attempts, try again later"
            )
        data = self._json(environ, "username", "password")
        user = self.store.get(data["username"])
        if user is None or not verify_password(data["password"], user["password"]):
            raise HTTPError(HTTPStatus.UNAUTHORIZED, "wrong username or password")
        self.limiter.reset(client)
        return HTTPStatus.OK, self.tokens.issue_pair(data["username"])

    def refresh(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict | None]:
        data = self._json(environ, "refresh_token")
        try:
            return HTTPStatus.OK, self.tokens.refresh(data["refresh_token"])
        except TokenError as exc:
            raise HTTPError(HTTPStatus.UNAUTHORIZED, str(exc)) from exc

    def me(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict | None]:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme != SCHEME or not token:
            raise HTTPError(HTTPStatus.UNAUTHORIZED, "missing bearer token")
        try:
            claims = self.tokens.decode(token, "access")
        except TokenError as exc:
            raise HTTPError(HTTPStatus.UNAUTHORIZED, str(exc)) from exc
        return HTTPStatus.OK, {"username": claims["sub"]}

    def reset_request(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict | None]:
        data = self._json(environ, "username")
        user = self.store.get(data["username"])
        if user is not None:
            token = make_reset_token()
            self.store.put(data["username"], {**user, "reset_token": token})
            self.outbox.append({"to": data["username"], "reset_token": token})
        # the same answer either way: do not reveal which usernames exist
        return HTTPStatus.ACCEPTED, {
            "status": "if the user exists, a reset token was sent"
        }

    def reset_confirm(self, environ: dict[str, Any]) -> tuple[HTTPStatus, dict | None]:
        data = self._json(environ, "username", "reset_token", "new_password")
        user = self.store.get(data["username"])
        if (
            user is None
            or not user.get("reset_token")
            or user["reset_token"] != data["reset_token"]
        ):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid reset token")
        self.store.put(
            data["username"], {"password": hash_password(data["new_password"])}
        )
        return HTTPStatus.OK, {"status": "password changed"}


def create_app(config: Config | None = None) -> AuthApp:
    """The WSGI application for ``config`` (defaults when omitted)."""
    return AuthApp(config or Config())
