"""An ``httpx.MockTransport`` that answers from a script and keeps every request it was sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from csl.cdn.base import PurgeBatch, batch_id_for

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests in order (a response, an exception to raise, or a function of the request);
    ``requests`` holds what was sent. A request past the end of the script fails the test."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.answers, f"unexpected request {request.method} {request.url}"
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    def async_transport(self) -> httpx.MockTransport:
        async def answer(request: httpx.Request) -> httpx.Response:
            return self._answer(request)

        return httpx.MockTransport(answer)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def batch(provider: str, zone: str, kind: str, *items: str) -> PurgeBatch:
    return PurgeBatch(batch_id=batch_id_for("run-1", provider, zone, kind, items), provider=provider,
                      zone=zone, kind=kind, items=tuple(items))
