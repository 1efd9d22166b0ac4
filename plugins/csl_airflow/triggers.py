"""Triggers: waiting on remote work in the triggerer, not in a worker slot.

Lives on ``sys.path`` (the plugins folder), not in the DAG folder, as the triggerer imports it
by its class path. Nothing here blocks the event loop: connections and provider set-up run in a
worker thread, polling goes through the providers' ``completion_async``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

__all__ = ["CdnCompletionTrigger"]


class CdnCompletionTrigger(BaseTrigger):
    """Polls the providers of asynchronous purge batches (CloudFront invalidations, Azure Front
    Door purge operations) every ``poll_s`` until each is done or failed, or ``timeout_s`` passes;
    fires one event ``{"states": {batch_id: state}}`` (``{"error": …}`` when it could not poll).
    Re-created from ``serialize()`` after a triggerer restart: it carries only ids, no secret."""

    def __init__(self, *, conn_ids: dict[str, str] | None, pending: list[dict[str, Any]], poll_s: float = 30.0,
                 timeout_s: float = 3600.0) -> None:
        super().__init__()
        self.conn_ids = dict(conn_ids or {})
        self.pending = [dict(p) for p in pending]
        self.poll_s = float(poll_s)
        self.timeout_s = float(timeout_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"conn_ids": self.conn_ids, "pending": self.pending, "poll_s": self.poll_s,
                 "timeout_s": self.timeout_s})

    def _cdn(self) -> Any:
        from csl.cdn import Cdn
        from csl_airflow.connections import settings_from_connections

        return Cdn.from_settings(settings_from_connections(self.conn_ids))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from csl.cdn.purge import poll_pending
        from csl.errors import CslError

        try:
            cdn = await asyncio.to_thread(self._cdn)
        except CslError as exc:
            yield TriggerEvent({"error": str(exc), "states": {}})
            return
        try:
            states, errors = await poll_pending(self.pending, cdn.zones, lambda zone: cdn.provider(zone.name),
                                        poll_s=self.poll_s, timeout_s=self.timeout_s)
        finally:
            await asyncio.to_thread(cdn.close)
        yield TriggerEvent({"states": states, "errors": errors})
