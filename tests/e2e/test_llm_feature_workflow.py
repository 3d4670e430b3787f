"""`cadre up --example` with an LLM endpoint: the spec's "Build user authentication API", all 7 steps.

What a user runs (``CADRE_LLM_BASE_URL=... make run``), run for real: the
``cadre`` CLI as a subprocess starts its own nats-server and every service as
a process, picks ``examples/tasks/build-auth-api.yaml`` (a ``feature`` task)
and the ``llm`` brain, and follows the task to its end. The model is a local
OpenAI-compatible HTTP server (``tests.fakes.ChatServer``) whose responder
reads each request's prompts and answers like a model would for that kind of
call. The code it "writes" is a small stdlib auth module whose tests really
run (pytest under coverage) and whose files the reviewers really analyse
(bandit, ruff, radon); the semantic review asks for rate limiting until the
code has it, so the review loop runs a real fix round.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import ChatServer, Fail, Reply

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fake-model"
PLAN = [  # the feature template's steps, as the decomposition trace numbers them
    "1. Research best practices for: Build user authentication API → Need Researcher",
    "2. Design the architecture for: Build user authentication API → Orchestrator (self)",
    "3. Implement: Build user authentication API → Need Developer",
    "4. Write tests for: Build user authentication API → Need Developer",
    "5. Security review of: Build user authentication API → Need Reviewer",
    "6. Performance check of: Build user authentication API → Need Developer",
    "7. Final review of: Build user authentication API → Need Reviewer",
]

AUTH_V1 = '''"""User authentication: scrypt password hashes, HMAC-signed access and refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

ACCESS_TTL = 15 * 60
REFRESH_TTL = 7 * 24 * 3600


class AuthError(Exception):
    """Bad credentials, or a token that is forged, expired, revoked or of the wrong type."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"{salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    salt, digest = stored.split("$", 1)
    actual = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(actual.hex(), digest)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AuthService:
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    users: dict[str, str] = field(default_factory=dict)
    live_refresh: set[str] = field(default_factory=set)

    def register(self, username: str, password: str) -> None:
        if not username or len(password) < 8:
            raise AuthError("a username and a password of at least 8 characters are required")
        if username in self.users:
            raise AuthError("username taken")
        self.users[username] = hash_password(password)

    def login(self, username: str, password: str, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        stored = self.users.get(username)
        if stored is None or not verify_password(password, stored):
            raise AuthError("invalid credentials")
        return self._issue(username, now)

    def refresh(self, token: str, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        claims = self.verify(token, "refresh", now)
        self.live_refresh.discard(claims["jti"])  # rotation: a refresh token works once
        return self._issue(claims["sub"], now)

    def me(self, access: str, now: float | None = None) -> str:
        return self.verify(access, "access", time.time() if now is None else now)["sub"]

    def verify(self, token: str, kind: str, now: float) -> dict:
        body, _, sig = token.partition(".")
        if not sig or not hmac.compare_digest(sig, self._sign(body)):
            raise AuthError("bad signature")
        claims = json.loads(_unb64(body))
        if claims.get("kind") != kind:
            raise AuthError("wrong token kind")
        if claims["exp"] <= now:
            raise AuthError("token expired")
        if kind == "refresh" and claims.get("jti") not in self.live_refresh:
            raise AuthError("refresh token revoked")
        return claims

    def _issue(self, username: str, now: float) -> dict[str, str]:
        jti = secrets.token_hex(16)
        self.live_refresh.add(jti)
        access = {"sub": username, "kind": "access", "exp": now + ACCESS_TTL}
        refresh = {"sub": username, "kind": "refresh", "exp": now + REFRESH_TTL, "jti": jti}
        return {"access": self._token(access), "refresh": self._token(refresh)}

    def _token(self, claims: dict) -> str:
        body = _b64(json.dumps(claims, sort_keys=True).encode())
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())
'''

RATE_LIMITER = '''

@dataclass
class RateLimiter:
    """At most ``limit`` failed logins per username within ``window`` seconds."""

    limit: int = 5
    window: float = 60.0
    failures: dict[str, list[float]] = field(default_factory=dict)

    def check(self, key: str, now: float) -> None:
        recent = [t for t in self.failures.get(key, []) if now - t < self.window]
        self.failures[key] = recent
        if len(recent) >= self.limit:
            raise AuthError("too many failed logins: try again later")

    def failed(self, key: str, now: float) -> None:
        self.failures.setdefault(key, []).append(now)

    def reset(self, key: str) -> None:
        self.failures.pop(key, None)
'''


def _auth_v2() -> str:
    """AUTH_V1 with a rate limiter on login (what the fix round writes)."""
    edits = [
        ("\n\n@dataclass\nclass AuthService:", RATE_LIMITER + "\n\n@dataclass\nclass AuthService:"),
        (
            "    live_refresh: set[str] = field(default_factory=set)\n",
            "    live_refresh: set[str] = field(default_factory=set)\n"
            "    limiter: RateLimiter = field(default_factory=RateLimiter)\n",
        ),
        (
            "        stored = self.users.get(username)\n"
            "        if stored is None or not verify_password(password, stored):\n"
            '            raise AuthError("invalid credentials")\n',
            "        self.limiter.check(username, now)\n"
            "        stored = self.users.get(username)\n"
            "        if stored is None or not verify_password(password, stored):\n"
            "            self.limiter.failed(username, now)\n"
            '            raise AuthError("invalid credentials")\n'
            "        self.limiter.reset(username)\n",
        ),
    ]
    text = AUTH_V1
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


TEST_AUTH = """import pytest

from auth import AuthError, AuthService


def test_register_login_and_me():
    svc = AuthService()
    svc.register("ada", "correct horse")
    tokens = svc.login("ada", "correct horse")
    assert svc.me(tokens["access"]) == "ada"


def test_a_wrong_password_is_refused():
    svc = AuthService()
    svc.register("ada", "correct horse")
    with pytest.raises(AuthError):
        svc.login("ada", "wrong horse")
"""

TEST_TOKENS = """import pytest

from auth import ACCESS_TTL, REFRESH_TTL, AuthError, AuthService


@pytest.fixture
def svc():
    s = AuthService()
    s.register("ada", "correct horse")
    return s


def test_access_token_lives_15_minutes(svc):
    tokens = svc.login("ada", "correct horse", now=1000.0)
    assert svc.me(tokens["access"], now=1000.0 + ACCESS_TTL - 1) == "ada"
    with pytest.raises(AuthError, match="expired"):
        svc.me(tokens["access"], now=1000.0 + ACCESS_TTL)


def test_refresh_tokens_rotate_and_live_7_days(svc):
    first = svc.login("ada", "correct horse", now=0.0)
    second = svc.refresh(first["refresh"], now=10.0)
    with pytest.raises(AuthError, match="revoked"):
        svc.refresh(first["refresh"], now=20.0)
    with pytest.raises(AuthError, match="expired"):
        svc.refresh(second["refresh"], now=10.0 + REFRESH_TTL)


def test_forged_and_misused_tokens_are_refused(svc):
    tokens = svc.login("ada", "correct horse")
    with pytest.raises(AuthError, match="signature"):
        svc.me(tokens["access"][:-2] + "xx")
    with pytest.raises(AuthError, match="kind"):
        svc.me(tokens["refresh"])


def test_registration_rules(svc):
    with pytest.raises(AuthError):
        svc.register("bob", "short")
    with pytest.raises(AuthError):
        svc.register("ada", "another password")
"""

TEST_RATE_LIMIT = """import pytest

from auth import AuthError, AuthService


def test_login_locks_after_five_failures_and_unlocks_after_the_window():
    svc = AuthService()
    svc.register("ada", "correct horse")
    for _ in range(5):
        with pytest.raises(AuthError, match="invalid"):
            svc.login("ada", "wrong horse", now=100.0)
    with pytest.raises(AuthError, match="too many"):
        svc.login("ada", "correct horse", now=101.0)
    assert svc.login("ada", "correct horse", now=161.0)["access"]
"""

FINDING = {
    "severity": "HIGH",
    "concern": "security",
    "rule": "missing-rate-limit",
    "message": "login has no rate limiting or lockout: passwords can be brute-forced",
    "file": "auth.py",
    "line": next(n for n, line in enumerate(AUTH_V1.splitlines(), 1) if "def login(" in line),
    "recommendation": "Count failed logins per username and refuse further attempts for a while.",
}


class Model:
    """Answers each chat request the way a model would for that kind of call, and logs the kinds."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.prompts: dict[str, str] = {}
        self.tokens = [0, 0]  # prompt, completion: what the answers reported as usage

    def __call__(self, body: dict[str, Any]) -> Reply | Fail:
        system = str(body["messages"][0]["content"])
        user = str(body["messages"][-1]["content"])
        kind, reply = self._answer(system, user)
        self.calls.append(kind)
        self.prompts.setdefault(kind, user)
        if reply is None:
            return Fail(400, f"the test's model does not know this call: {user[:200]}")
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body["messages"])
        text = json.dumps(reply)
        prompt, completion = max(1, prompt_chars // 4), max(1, len(text) // 4)
        self.tokens[0] += prompt
        self.tokens[1] += completion
        return Reply(text, prompt_tokens=prompt, completion_tokens=completion)

    def _answer(self, system: str, user: str) -> tuple[str, dict[str, Any] | None]:
        if "research assistant" in system:
            cited = re.search(r"Cite only passage numbers 1 to (\d+)\.", user)
            top = min(2, int(cited.group(1))) if cited else 1
            summary = (
                "Hash passwords with a slow salted key-derivation function such as scrypt [1]. "
                f"Keep access tokens short-lived, rotate refresh tokens on every use and limit failed logins [{top}]."
            )
            return "research", {"summary": summary}
        if "Python developer" in system:
            step = re.match(r"Step: (\w+)", user)
            kind = step.group(1) if step else "developer?"
            if "the tests fail" in user:
                return f"{kind}:repair", None  # the code below passes its tests: no repair expected
            if kind == "implementation":
                files = {"auth.py": AUTH_V1, "test_auth.py": TEST_AUTH}
                return kind, _files("auth module with scrypt hashes and rotating refresh tokens", files)
            if kind == "write_tests":
                return kind, _files(
                    "token lifetime, rotation and forgery tests", {"test_tokens.py": TEST_TOKENS}
                )
            if kind == "fix":
                found = re.search(
                    r"id=([0-9a-f]{12})(?: MUST FIX)? \[HIGH security\] llm:missing-rate-limit", user
                )
                if found is None:
                    return kind, None
                files = {"auth.py": _auth_v2(), "test_rate_limit.py": TEST_RATE_LIMIT}
                return kind, _files("rate limiting on login", files, addresses=found.group(1))
            return kind, None
        if "code reviewer" in system:
            step = re.match(r"Review \((\w+)\)", user)
            kind = f"review:{step.group(1) if step else '?'}"
            if "class RateLimiter" in user:
                return kind, {"issues": []}
            return kind + ":no-rate-limit", {"issues": [FINDING]}
        return "unknown", None


def _files(summary: str, files: dict[str, str], addresses: str | None = None) -> dict[str, Any]:
    return {
        "summary": summary,
        "files": [{"path": p, "content": c, "addresses": addresses} for p, c in files.items()],
    }


def _env(base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        NO_COLOR="1",
        CADRE_LLM_BASE_URL=base_url,
        CADRE_LLM_MODEL=MODEL,
        CADRE_LLM_MAX_RETRIES="0",
        CADRE_LLM_TIMEOUT="30",
        CADRE_LLM_PRICE_INPUT_PER_1K="0.5",
        CADRE_LLM_PRICE_OUTPUT_PER_1K="1.5",
        CADRE_MONITOR_HTTP_PORT="0",  # never fight over 8080
        CADRE_INCLUDE_INSTALLED_PACKAGES="false",  # the project's notes are corpus enough, and fast
    )
    return env


@pytest.mark.slow
async def test_cadre_up_example_runs_the_feature_task_through_all_seven_steps_with_a_model(
    tmp_path: Path,
) -> None:
    model = Model()
    async with ChatServer(model=MODEL) as chat:
        chat.script(*[model] * 30)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.client.cli.app",
            "up",
            "--example",
            "--state-dir",
            str(tmp_path / "state"),
            "--start-timeout",
            "60",
            "--timeout",
            "120",
            cwd=tmp_path,  # .cadre/work and the research index land here, not in the checkout
            env=_env(chat.base_url),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 180)
        except TimeoutError:
            proc.kill()
            raw_out, raw_err = await proc.communicate()
            pytest.fail(f"cadre up --example did not finish:\n{raw_out.decode()[-4000:]}\n{raw_err.decode()}")
    out, err = raw_out.decode(), raw_err.decode()
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(tmp_path.glob("state/logs/*.log"))
    )
    context = f"{out[-6000:]}\n--- stderr\n{err}\n{logs}"
    assert proc.returncode == 0, context
    assert "submitted build-auth-api.yaml as task_" in out, context

    # the model was asked by every agent role, in the workflow's order, and never for the builtin steps
    assert model.calls == [
        "research",
        "implementation",
        "write_tests",
        "review:security_review:no-rate-limit",
        "fix",
        "review:security_review",
        "review:final_review",
    ], context
    assert len(chat.chat_requests()) == len(model.calls)
    assert all(r.body["model"] == MODEL for r in chat.chat_requests())
    assert "Requirement: Rate limiting" in model.prompts["implementation"]
    assert "Hash passwords with a slow salted" in model.prompts["implementation"]  # research was passed on
    assert "POST /register, POST /login" in model.prompts["implementation"]  # the task's api_spec too
    assert "class AuthService" in model.prompts["write_tests"]  # it saw the implementation's workspace
    assert "llm:missing-rate-limit at auth.py:" in model.prompts["fix"]

    # the spec's trace: the 7-step decomposition in order, delegations, returns, the review loop
    assert "[Orchestrator] Received task: Build user authentication API" in out
    positions = [out.find(line) for line in PLAN]
    assert -1 not in positions and positions == sorted(positions), context
    lines = out.splitlines()
    assert lines.count("[Orchestrator] → [Developer]:") == 4  # implement, tests, fix1, performance
    assert lines.count("[Orchestrator] → [Reviewer]:") == 3  # security review, re-review, final review
    assert lines.count("[Orchestrator] → [Researcher]:") == 1
    tasks = [line.strip() for line in lines if line.strip().startswith("Task: ")]
    assert tasks == [  # every delegation in order; the design step is the orchestrator's own
        "Task: Research best practices for: Build user authentication API",
        "Task: Implement: Build user authentication API",
        "Task: Write tests for: Build user authentication API",
        "Task: Security review of: Build user authentication API",
        "Task: Fix security issues: address the reviewer's 1 findings from security_review",
        "Task: Re-review after fix round 1: Security review of: Build user authentication API",
        "Task: Performance check of: Build user authentication API",
        "Task: Final review of: Build user authentication API",
    ], context
    assert "[Orchestrator] (self) Design the architecture for: Build user authentication API:" in out
    assert re.search(
        r"Review of security_review not approved \(1 blocking finding\(s\) open: .+?\): fix round 1 of 3", out
    ), context
    assert "login has no rate limiting or lockout" in out
    assert "Changes requested" in out and "Approved for merge" in out
    assert "All issues resolved" in out
    assert "auth.py: modified by the model to address" in out

    # the final result: completed and approved, the score rose, the model's usage is reported
    assert re.search(r"Task task_\w+: COMPLETED \(approved\)", out), context
    scores = re.search(r"scores (\d+(?: → \d+)+)", out)
    assert scores, context
    history = [int(s) for s in scores.group(1).split(" → ")]
    assert history == [history[0], 100, 100] and history[0] < 100, history  # 4 off for the HIGH finding
    usage = re.search(rf"LLM {MODEL}: (\d+)\+(\d+)\s+tokens,\s+\$(\d+\.\d+)", out)
    assert usage, context
    prompt, completion, cost = int(usage.group(1)), int(usage.group(2)), float(usage.group(3))
    assert [prompt, completion] == model.tokens  # every call's usage, summed over the steps
    assert cost == pytest.approx(round(prompt / 1000 * 0.5 + completion / 1000 * 1.5, 4), abs=1e-4)
    assert f"Model usage: {prompt}+{completion} tokens" in out  # the Markdown report says it too
    assert "class RateLimiter" in out  # the fix round's diff is in the report
    assert "stopped" in lines
