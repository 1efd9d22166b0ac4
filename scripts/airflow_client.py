"""A small client for Airflow's REST API v2 (token auth), used by the demo and the tests."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

TERMINAL = {"success", "failed"}


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        response = self._http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise RuntimeError(f"Airflow login as {username!r} failed: HTTP {response.status_code} {response.text}")
        self._http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(method, f"/api/v2{path}", **kwargs)

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                               f"HTTP {response.status_code} {response.text}")
        return response.json()

    def wait_for_dag(self, dag_id: str, *, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            response = self.request("GET", f"/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            if time.monotonic() > deadline:
                errors = self.request("GET", "/importErrors").text
                raise RuntimeError(f"DAG {dag_id} not parsed after {timeout:.0f}s; import errors: {errors}")
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self._ok(self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False}))

    def pause(self, dag_id: str) -> None:
        self._ok(self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": True}))

    def trigger(self, dag_id: str, conf: dict | None = None) -> httpx.Response:
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._ok(self.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"))

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} of {dag_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        body = self._ok(self.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"))
        return body["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        response = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index})
        return self._ok(response)["value"]
