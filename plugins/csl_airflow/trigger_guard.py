"""A root middleware of Airflow's API server: a csl DAG's run is refused with HTTP 400 when its
``conf`` breaks ``csl_airflow.params.conf_refusal`` (a key no Param declares, NaN/Infinity), or
when a Param refuses its value (what Airflow would refuse too, said in one line).

Airflow has no hook between "the conf is validated" and "the run is created" (its validation is per
Param, and an unknown key becomes a Param that accepts anything), so the guard reads the request
before the route does: ``POST /api/v2/dags/{dag_id}/dagRuns`` — where the UI's trigger form posts
too — and ``POST /api/v2/backfills`` (+ ``/dry_run``), the form's backfill mode. It answers only a
caller the route itself would let trigger the DAG (same user resolution, same permission check);
anyone else gets the route's own 401/403/404, so the guard never tells who may not trigger a DAG
what its Params are. DAGs without the ``csl`` tag are left alone. If the guard itself fails it
logs and lets the request through: every csl task checks the same rule before it does anything.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from csl_airflow.params import STRICT_CONF_TAG, conf_refusal

__all__ = ["TriggerConfGuard", "middleware_entry"]

log = logging.getLogger("csl.airflow.trigger_guard")

_TRIGGER = re.compile(r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?")
_BACKFILL = re.compile(r"/api/v2/backfills(?:/dry_run)?/?")


class TriggerConfGuard:
    """Pure ASGI middleware (no body-reading wrapper): buffers the body of the guarded POSTs only,
    decides, then replays it to the route unchanged."""

    def __init__(self, app: Any, *, tag: str = STRICT_CONF_TAG) -> None:
        self.app = app
        self.tag = tag

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        trigger = _TRIGGER.fullmatch(path)
        if trigger is None and _BACKFILL.fullmatch(path) is None:
            return await self.app(scope, receive, send)

        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        try:
            refusal = await self._refusal(scope, body, trigger.group("dag_id") if trigger else None)
        except Exception:
            log.exception("csl trigger guard failed; the request goes through unchecked")
            refusal = None
        if refusal is None:
            return await self.app(scope, replay, send)
        payload = json.dumps({"detail": refusal}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _refusal(self, scope: Any, body: bytes, dag_id: str | None) -> str | None:
        try:
            request = json.loads(body)
        except ValueError:
            return None  # the route answers malformed bodies itself
        if not isinstance(request, dict):
            return None
        if dag_id is None:  # a backfill names its DAG in the body
            dag_id, conf = request.get("dag_id"), request.get("dag_run_conf")
        else:
            conf = request.get("conf")
        if not isinstance(dag_id, str) or not isinstance(conf, dict) or not conf:
            return None
        user = await _user(scope)
        if user is None:
            return None
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self._check, scope, user, dag_id, conf)

    def _check(self, scope: Any, user: Any, dag_id: str, conf: dict) -> str | None:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session

        with create_session() as session:
            dag = scope["app"].state.dag_bag.get_latest_version_of_dag(dag_id, session=session)
            if dag is None or self.tag not in dag.tags:
                return None
            details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id, session=session))
        if not get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                    details=details, user=user):
            return None
        return conf_refusal(dag_id, conf, dag.params) or _param_refusal(dag_id, dag.params, conf)


def _param_refusal(dag_id: str, params: Any, conf: dict) -> str | None:
    """Airflow's own refusal of a bad value, said in one line: its message repeats the whole schema,
    and for a ``pattern`` the regex, where the Param's description says what is expected."""
    from jsonschema import FormatChecker, ValidationError, validate

    for name, value in sorted(conf.items()):
        param = params.get_param(name)
        try:
            validate(value, param.schema, format_checker=FormatChecker())
        except ValidationError as exc:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            why = (f"not of the form the field asks for: {param.description}" if exc.validator == "pattern"
                   else exc.message if len(exc.message) <= 200 else f"fails the Param's {exc.validator!r} rule")
            return f"{dag_id}: {name} {shown} refused: {why}"
    return None


async def _user(scope: Any) -> Any:
    """The caller as the route would resolve it (bearer token, else the UI's session), or None."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import HTTPException
    from fastapi.security import HTTPAuthorizationCredentials
    from starlette.requests import Request

    request = Request(scope)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    try:
        return await get_user(request, None, bearer)
    except HTTPException:
        return None


def middleware_entry() -> dict[str, Any]:
    return {"middleware": TriggerConfGuard, "name": "csl: refuse undeclared or non-finite conf values"}
