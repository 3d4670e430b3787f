"""A local HTTP server that speaks the OpenAI chat-completions wire format, with scripted replies.

The LLM brains are tested through the real ``openai`` client over real HTTP:
this server answers ``POST /v1/chat/completions`` with the response shape the
real API uses (and ``GET /v1/models``), plays a queue of scripted replies or
error statuses (429 with ``Retry-After``, 500, a raw malformed body...) and
records every request, so tests can assert on prompts, retries and timings.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["ChatServer", "Reply", "Fail", "Raw", "Recorded", "Responder"]


@dataclass(frozen=True)
class Reply:
    """A 200 completion whose message content is ``content``."""

    content: str
    prompt_tokens: int | None = None  # default: about one token per 4 characters of the prompt
    completion_tokens: int | None = None
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Fail:
    """An error status with the API's error body (e.g. 429 + ``Retry-After``, 500)."""

    status: int
    message: str = "scripted failure"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Raw:
    """Any status and body as given (a broken proxy, a non-JSON 200...)."""

    status: int
    body: str
    content_type: str = "application/json"


# A responder builds the reply from the request body (for replies that quote the prompt).
Responder = Callable[[dict[str, Any]], "Reply | Fail | Raw"]
Scripted = Reply | Fail | Raw | Responder


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival

    @property
    def system(self) -> str:
        return str(self.body["messages"][0]["content"])

    @property
    def user(self) -> str:
        return str(self.body["messages"][-1]["content"])


class ChatServer:
    """``async with ChatServer() as fake:`` — serves on 127.0.0.1 at a random port."""

    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[Recorded] = []
        self._script: deque[Scripted] = deque()
        self._runner: web.AppRunner | None = None
        self._counter = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``CADRE_LLM_BASE_URL`` should be."""
        return f"{self.url}/v1"

    def script(self, *items: Scripted) -> None:
        """Queue replies, played in order, one per chat request."""
        self._script.extend(items)

    @property
    def pending(self) -> int:
        return len(self._script)

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> ChatServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ChatServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handlers -----------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(Recorded(request.path, {}, dict(request.headers), time.monotonic()))
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "request body is not JSON", "invalid_request_error")
        self.requests.append(Recorded(request.path, body, dict(request.headers), time.monotonic()))
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            return _error(
                400, "'model' and a non-empty 'messages' list are required", "invalid_request_error"
            )
        if not self._script:
            return _error(400, "fake chat server: no scripted reply left", "invalid_request_error")
        item = self._script.popleft()
        if not isinstance(item, Reply | Fail | Raw):
            item = item(body)
        if isinstance(item, Fail):
            kind = "rate_limit_exceeded" if item.status == 429 else "server_error"
            return _error(item.status, item.message, kind, item.headers)
        if isinstance(item, Raw):
            return web.Response(status=item.status, text=item.body, content_type=item.content_type)
        return web.json_response(self._completion(body, item))

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        self._counter += 1
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body["messages"])
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else max(1, prompt_chars // 4)
        completion = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else max(1, len(reply.content) // 4)
        )
        return {
            "id": f"chatcmpl-fake{self._counter:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    payload = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.json_response(payload, status=status, headers=headers or {})
