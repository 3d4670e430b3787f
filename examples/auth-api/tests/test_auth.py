"""Behaviour of the auth API through its WSGI interface (no server needed)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import jwt
import pytest

from auth_api import Config, create_app, load_config
from auth_api.passwords import hash_password, make_reset_token, verify_password
from auth_api.ratelimit import RateLimiter
from auth_api.store import UserStore
from auth_api.tokens import TokenError, TokenService


class Client:
    """Calls the WSGI app the way a server would."""

    def __init__(self, app):
        self.app = app

    def request(self, method, path, body=None, headers=None, remote="10.0.0.1"):
        raw = json.dumps(body).encode() if body is not None else b""
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "CONTENT_LENGTH": str(len(raw)),
            "wsgi.input": io.BytesIO(raw),
            "REMOTE_ADDR": remote,
        }
        environ.update(headers or {})
        setup_testing_defaults(environ)
        seen = {}

        def start_response(status, hdrs):
            seen["status"] = int(status.split()[0])
            seen["headers"] = dict(hdrs)

        data = b"".join(self.app(environ, start_response))
        return seen["status"], seen["headers"], json.loads(data) if data else None


@pytest.fixture
def app(tmp_path: Path):
    return create_app(
        Config(
            secret_key="test-secret-key-of-32-bytes-len!",
            store_path=str(tmp_path / "u.json"),
        )
    )


@pytest.fixture
def client(app):
    c = Client(app)
    assert (
        c.request(
            "POST", "/register", {"username": "ada", "password": "correct horse"}
        )[0]
        == 201
    )
    return c


def login(client, password="correct horse", remote="10.0.0.1"):
    return client.request(
        "POST", "/login", {"username": "ada", "password": password}, remote=remote
    )


def test_login_returns_access_token_of_15_minutes_and_refresh_token_of_7_days(client):
    status, _, body = login(client)
    assert (
        status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 900
    )
    access = jwt.decode(body["access_token"], options={"verify_signature": False})
    refresh = jwt.decode(body["refresh_token"], options={"verify_signature": False})
    assert access["exp"] - access["iat"] == 15 * 60
    assert refresh["exp"] - refresh["iat"] == 7 * 24 * 3600


def test_wrong_password_and_unknown_user_are_rejected_alike(client):
    assert login(client, "wrong password")[0] == 401
    status, _, body = client.request(
        "POST", "/login", {"username": "bob", "password": "whatever1"}
    )
    assert status == 401 and body["error"] == "wrong username or password"


def test_register_refuses_duplicates_short_passwords_and_bad_bodies(client):
    assert (
        client.request(
            "POST", "/register", {"username": "ada", "password": "another one"}
        )[0]
        == 409
    )
    assert (
        client.request("POST", "/register", {"username": "bob", "password": "short"})[0]
        == 400
    )
    assert client.request("POST", "/register", {"username": "bob"})[0] == 400
    assert client.request("GET", "/nowhere")[0] == 404


def test_me_needs_a_valid_access_token(client):
    tokens = login(client)[2]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {tokens['access_token']}"}
    status, _, body = client.request("GET", "/me", headers=auth)
    assert status == 200 and body == {"username": "ada"}
    assert client.request("GET", "/me")[0] == 401
    refresh_as_access = {"HTTP_AUTHORIZATION": f"Bearer {tokens['refresh_token']}"}
    assert client.request("GET", "/me", headers=refresh_as_access)[0] == 401


def test_me_answers_not_modified_when_the_etag_matches(client):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {login(client)[2]['access_token']}"}
    status, headers, _ = client.request("GET", "/me", headers=auth)
    etag = headers["ETag"]
    assert client.request("GET", "/me", headers=auth)[1]["ETag"] == etag
    status, _, body = client.request(
        "GET", "/me", headers={**auth, "HTTP_IF_NONE_MATCH": etag}
    )
    assert status == 304 and body is None


def test_refresh_rotates_and_a_refresh_token_works_only_once(client):
    first = login(client)[2]
    status, _, second = client.request(
        "POST", "/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    assert (
        client.request("POST", "/refresh", {"refresh_token": first["refresh_token"]})[0]
        == 401
    )
    assert (
        client.request("POST", "/refresh", {"refresh_token": second["access_token"]})[0]
        == 401
    )


def test_expired_access_token_is_rejected():
    past = TokenService(
        "k" * 32, access_ttl=900, refresh_ttl=3600, clock=lambda: time.time() - 1000
    )
    now = TokenService("k" * 32, access_ttl=900, refresh_ttl=3600)
    with pytest.raises(TokenError):
        now.decode(past.issue_pair("ada")["access_token"], "access")
    with pytest.raises(TokenError):
        TokenService("other-key" * 4, 900, 3600).decode(
            now.issue_pair("ada")["access_token"], "access"
        )


def test_login_is_rate_limited_per_client(client):
    for _ in range(5):
        assert login(client, "wrong password")[0] == 401
    assert login(client)[0] == 429
    assert login(client, remote="10.0.0.2")[0] == 200


def test_rate_limiter_window_slides():
    clock = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: clock[0])
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    clock[0] = 10.5
    assert limiter.allow("a")


def test_password_hashes_are_salted_and_verify():
    one, two = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert one != two and "s3cret-pass" not in one
    assert verify_password("s3cret-pass", one) and verify_password("s3cret-pass", two)
    assert not verify_password("s3cret-pasS", one)


def test_password_reset_with_the_mailed_token(client, app):
    assert (
        client.request("POST", "/password-reset/request", {"username": "ada"})[0] == 202
    )
    assert (
        client.request("POST", "/password-reset/request", {"username": "nobody"})[0]
        == 202
    )
    assert [m["to"] for m in app.outbox] == ["ada"]
    token = app.outbox[0]["reset_token"]
    bad = {"username": "ada", "reset_token": "nope", "new_password": "new password 1"}
    assert client.request("POST", "/password-reset/confirm", bad)[0] == 400
    good = {**bad, "reset_token": token}
    assert client.request("POST", "/password-reset/confirm", good)[0] == 200
    assert client.request("POST", "/password-reset/confirm", good)[0] == 400  # used up
    assert login(client, "new password 1")[0] == 200


def test_reset_tokens_are_long_and_unique():
    tokens = {make_reset_token() for _ in range(200)}
    assert len(tokens) == 200 and all(len(t) >= 32 for t in tokens)


def test_config_file_overrides_defaults_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text("access_ttl: 600\nlogin_attempts: 3\n")
    config = load_config(path)
    assert (config.access_ttl, config.login_attempts, config.refresh_ttl) == (
        600,
        3,
        7 * 24 * 3600,
    )
    assert load_config() == Config()
    path.write_text("acess_ttl: 600\n")
    with pytest.raises(ValueError, match="acess_ttl"):
        load_config(path)


def test_users_persist_and_can_be_backed_up(client, app, tmp_path):
    reloaded = UserStore(app.config.store_path)
    assert verify_password("correct horse", reloaded.get("ada")["password"])
    copy = app.store.backup(tmp_path / "backup.json")
    assert json.loads(copy.read_text()) == json.loads(
        Path(app.config.store_path).read_text()
    )
