"""The one client every LLM brain uses: any OpenAI-compatible chat-completions endpoint.

Built on the ``openai`` SDK's ``AsyncOpenAI`` pointed at ``llm_base_url``
(OpenAI, Ollama, vLLM, llama.cpp server...). The SDK owns timeouts and
retries: 408/409/429/5xx and connection errors are retried with exponential
backoff and jitter, honouring ``Retry-After`` / ``retry-after-ms``. This
module adds what the brains need on top: a JSON reply decoded into a typed
msgspec Struct, the usage of every call (tokens, requests, cost from the
configured prices), and one error type, ``LLMError``, whose message says what
was wrong.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import openai
from openai.types.chat import ChatCompletion

from shared.agent.brains import BrainResult
from shared.agent.settings import LLMSettings
from shared.contract.errors import LLMError
from shared.contract.protocol import Usage
from shared.contract.workspace import SKIP_DIRS

__all__ = [
    "LLMClient",
    "LLMReplyError",
    "Meter",
    "add_usage",
    "extract_json",
    "workspace_digest",
    "failed",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_JSON_RULE = (
    "Answer with one JSON object only, no prose and no Markdown around it. "
    "It must match this shape (JSON Schema):\n"
)
# Statuses after which another attempt of the whole step may help.
_TRANSIENT = frozenset({408, 409, 429, 500, 502, 503, 504})


class LLMReplyError(LLMError):
    """The endpoint answered, but the reply was unusable; carries the usage it cost."""

    def __init__(self, detail: str, usage: Usage) -> None:
        super().__init__(detail, retryable=False)
        self.usage = usage


def add_usage(a: Usage, b: Usage) -> Usage:
    """The sum of two usages (the model name of whichever has one)."""
    return Usage(
        model=a.model or b.model,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        requests=a.requests + b.requests,
        cost_usd=round(a.cost_usd + b.cost_usd, 8),
    )


@dataclass
class Meter:
    """The usage of one step's model calls, summed (including calls whose reply was unusable)."""

    usage: Usage = field(default_factory=Usage)

    async def ask(self, client: LLMClient, system: str, user: str, reply_type: type[T]) -> T:
        try:
            value, usage = await client.chat_json(system, user, reply_type)
        except LLMReplyError as exc:
            self.usage = add_usage(self.usage, exc.usage)
            raise
        self.usage = add_usage(self.usage, usage)
        return value


def failed(exc: LLMError, usage: Usage, what: str) -> BrainResult:
    """A failed step for a model error: the reason in the summary and error, the usage kept."""
    logger.warning("%s failed: %s", what, exc)
    return BrainResult(
        "failed", f"{what} failed: {exc}", error=str(exc), usage=usage, retryable=not exc.non_retryable
    )


def workspace_digest(root: Path, limit: int, *, per_file: int = 20_000) -> tuple[str, list[str]]:
    """The workspace's text files as ``=== path ===`` blocks, bounded to ``limit`` characters.

    Returns the text and the paths left out (listed by name only) so the prompt stays bounded.
    """
    blocks: list[str] = []
    left_out: list[str] = []
    used = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        block = f"=== {rel.as_posix()} ===\n{text}"
        if len(text) > per_file or used + len(block) > limit:
            left_out.append(rel.as_posix())
            continue
        blocks.append(block)
        used += len(block)
    return "\n".join(blocks), left_out


def extract_json(text: str) -> str:
    """The JSON object inside a model reply: as is, inside a ```json fence, or between prose."""
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        return stripped
    fenced = _FENCE.search(stripped)
    if fenced and fenced.group(1).strip().startswith("{"):
        return fenced.group(1).strip()
    start, end = stripped.find("{"), stripped.rfind("}")
    if start != -1 and end > start:
        return stripped[start : end + 1]
    return stripped


class LLMClient:
    """Typed JSON chat against one OpenAI-compatible endpoint, with usage and cost."""

    def __init__(self, settings: LLMSettings) -> None:
        if not settings.llm_base_url:
            raise LLMError("LLM brain selected but CADRE_LLM_BASE_URL is not set")
        self.settings = settings
        self.model = settings.llm_model
        self._client = openai.AsyncOpenAI(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key or "not-needed",
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for a call at the configured per-1k-token prices."""
        s = self.settings
        return round(
            prompt_tokens / 1000 * s.llm_price_input_per_1k
            + completion_tokens / 1000 * s.llm_price_output_per_1k,
            8,
        )

    async def chat_json(self, system: str, user: str, reply_type: type[T]) -> tuple[T, Usage]:
        """Ask for one JSON object and decode it as ``reply_type``.

        Raises ``LLMError`` when the endpoint fails after the SDK's retries, and
        ``LLMReplyError`` (an ``LLMError``, with the usage spent) when the reply
        is not JSON or not of the expected shape.
        """
        schema = msgspec.json.encode(msgspec.json.schema(reply_type)).decode()
        messages: list[Any] = [
            {"role": "system", "content": f"{system}\n\n{_JSON_RULE}{schema}"},
            {"role": "user", "content": user},
        ]
        extra: dict[str, Any] = {}
        if self.settings.llm_json_mode:
            extra["response_format"] = {"type": "json_object"}
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=0, **extra
            )
            completion = raw.parse()
        except openai.APIStatusError as exc:
            transient = exc.status_code in _TRANSIENT
            tried = f" (still failing after {self.settings.llm_max_retries} retries)" if transient else ""
            raise LLMError(
                f"model endpoint {self.settings.llm_base_url} answered HTTP {exc.status_code}{tried}:"
                f" {_error_text(exc)}",
                retryable=transient,
            ) from exc
        except openai.APITimeoutError as exc:
            raise LLMError(
                f"model endpoint {self.settings.llm_base_url} timed out after {self.settings.llm_timeout}s",
                retryable=True,
            ) from exc
        except openai.APIConnectionError as exc:
            raise LLMError(
                f"model endpoint {self.settings.llm_base_url} unreachable: {exc}", retryable=True
            ) from exc
        except openai.OpenAIError as exc:  # e.g. a 200 whose body does not validate
            raise LLMError(f"model endpoint gave an unusable response: {exc}") from exc
        if not isinstance(completion, ChatCompletion):  # a non-JSON body comes back as text
            raise LLMError(
                f"model endpoint {self.settings.llm_base_url} did not answer with a chat completion:"
                f" {_excerpt(str(completion))}"
            )

        tokens = completion.usage
        prompt = tokens.prompt_tokens if tokens else 0
        output = tokens.completion_tokens if tokens else 0
        usage = Usage(
            model=completion.model or self.model,
            prompt_tokens=prompt,
            completion_tokens=output,
            requests=1 + raw.retries_taken,
            cost_usd=self.cost(prompt, output),
        )
        logger.info(
            "llm call model=%s prompt_tokens=%d completion_tokens=%d retries=%d",
            usage.model,
            prompt,
            output,
            raw.retries_taken,
        )
        if not completion.choices:
            raise LLMReplyError("model reply has no choices", usage)
        choice = completion.choices[0]
        content = choice.message.content
        if not content or not content.strip():
            raise LLMReplyError(f"model reply is empty (finish_reason={choice.finish_reason})", usage)
        if choice.finish_reason == "length":
            raise LLMReplyError(
                f"model reply was cut off at the token limit (finish_reason=length): {_excerpt(content)}",
                usage,
            )
        try:
            value = msgspec.json.decode(extract_json(content), type=reply_type)
        except msgspec.ValidationError as exc:
            raise LLMReplyError(
                f"model reply does not have the expected shape ({reply_type.__name__}): {exc};"
                f" reply was {_excerpt(content)}",
                usage,
            ) from exc
        except msgspec.DecodeError as exc:
            raise LLMReplyError(
                f"model reply is not valid JSON ({exc}); reply was {_excerpt(content)}", usage
            ) from exc
        return value, usage

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc.message)
