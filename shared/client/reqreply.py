"""One request/reply that tells "the server refused this login the subject" from "nobody answered".

A publish the server's permissions refuse is not an error of the publish
call: nats-server drops the message and sends ``-ERR 'Permissions Violation
for Publish to "<subject>"'`` asynchronously, so a plain ``nc.request`` just
waits out its timeout and reports "no answer". This request publishes, then
round-trips a PING twice: the server answers a PING after handling what came
before it, and nats.py writes a PING straight to the socket (ahead of
publishes still in its buffer) but hands the buffer to its writer on each
flush, so the second PING follows the publish. When its PONG is back, a
refusal has been read (nats.py keeps it as ``last_error``) and raises
``PermissionDenied`` at once, naming the user and the subject. Should the
refusal still come later, the timeout is reported as that refusal too. A
server without responders answers 503 (``NoRespondersError``); silence is
``nats.errors.TimeoutError``.

nats.py keeps only the last asynchronous error: another refusal of this
connection arriving in between would hide this one (the caller then sees the
timeout).
"""

from __future__ import annotations

import contextlib
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from shared.contract.errors import CadreError

__all__ = ["PermissionDenied", "request", "refusal_of"]

_NO_RESPONDERS = "503"


class PermissionDenied(CadreError):
    """The NATS server refused this login a subject (its "Permissions Violation").

    ``needs`` says which login may (e.g. the operator's for the monitor's views);
    retrying with the same login cannot help.
    """

    non_retryable = True

    def __init__(self, user: str, subject: str, what: str, needs: str = "") -> None:
        self.user = user
        self.subject = subject
        self.what = what
        self.needs = needs
        text = f"NATS user {user!r} may not {what} ({subject}): the server refused it"
        super().__init__(f"{text}; {needs}" if needs else text)


def refusal_of(err: BaseException | None, *subjects: str) -> str | None:
    """The server's permission-violation text in ``err`` when it names one of ``subjects``."""
    text = str(err or "").lower()
    if "permissions violation" not in text:
        return None
    named = any(f'to "{s.lower()}"' in text for s in subjects)
    return str(err) if named else None


async def request(
    nc: NATS,
    subject: str,
    payload: bytes,
    timeout: float,  # noqa: ASYNC109
    *,
    user: str,
    what: str,
    needs: str = "",
) -> Msg:
    """Request ``subject``: the answer, or ``PermissionDenied`` (``user`` may not ``what``) at once.

    Raises ``NoRespondersError`` when nobody listens and ``nats.errors.TimeoutError``
    when no answer comes within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    inbox = nc.new_inbox()
    before = nc.last_error

    def check() -> None:
        err = nc.last_error
        if err is not before and refusal_of(err, subject, inbox):
            raise PermissionDenied(user, subject, what, needs)

    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, payload, reply=inbox)
        for _ in range(2):  # the second PING goes out behind the publish (see above)
            await nc.flush(timeout=max(1, int(timeout)))
        check()
        try:
            msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
        except NatsTimeoutError:
            check()
            raise
    finally:
        with contextlib.suppress(Exception):  # already gone after its one message
            await sub.unsubscribe()
    if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS and not msg.data:
        raise NoRespondersError
    return msg
