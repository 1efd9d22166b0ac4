"""Run in a subprocess (own AIRFLOW_HOME): parse every DAG file, report facts as JSON.

Usage: python inspect_dags.py DAGS_DIR [PARAM_CASES_JSON [CONF_CASES_JSON]]

PARAM_CASES_JSON: {dag_id: {param: [value, ...]}}, each value resolved by that Param.
CONF_CASES_JSON: [conf, ...], each given to every task's ``pre_execute`` as the run's conf.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HEAVY = ("pandas", "great_expectations", "boto3", "botocore", "psycopg", "httpx", "numpy")


def main() -> None:
    dags_dir = Path(sys.argv[1])
    cases = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    conf_cases = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
    import airflow.sdk  # noqa: F401 - paid once, not charged to the first DAG file

    baseline = {m for m in sys.modules if m.split(".")[0] in HEAVY}
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.exceptions import AirflowFailException

    import csl_airflow.base  # noqa: F401 - the shared glue: its imports count as the DAGs'
    from csl_airflow.base import CslBaseOperator
    from csl_airflow.params import ParamValue

    heavy_after_glue = {m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY}
    files = {}
    for path in sorted(dags_dir.glob("*.py")):
        timings = []
        for attempt in range(3):
            spec = importlib.util.spec_from_file_location(f"dagfile_{path.stem}_{attempt}", path)
            module = importlib.util.module_from_spec(spec)
            started = time.perf_counter()
            spec.loader.exec_module(module)
            timings.append(time.perf_counter() - started)
        files[path.name] = {"parse_s": min(timings)}
    heavy_now = {m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY} | heavy_after_glue
    heavy = sorted(heavy_now - {m.split(".")[0] for m in baseline})

    bag = DagBag(dag_folder=str(dags_dir))
    dags = {}
    for dag_id, dag in bag.dags.items():
        params = {}
        for name in dag.params:
            param = dag.params.get_param(name)
            params[name] = {"schema": param.schema, "description": param.description, "default": param.value,
                            "accepts_null": _accepts(param, None)}
        refused = {}
        for name, values in cases.get(dag_id, {}).items():
            refused[name] = []
            for value in values:
                try:
                    dag.params.get_param(name).resolve(value)
                    refused[name].append({"value": value, "refused": False})
                except Exception as exc:  # noqa: BLE001 - what we report is the refusal
                    refused[name].append({"value": value, "refused": True, "message": str(exc).splitlines()[0]})
        tasks = {}
        for task in dag.tasks:
            mapped = isinstance(task, MappedOperator)  # not an operator yet: its class is what runs
            checks = issubclass(task.operator_class if mapped else type(task), CslBaseOperator)
            outcomes = []
            if checks and not mapped:
                for conf in conf_cases:
                    try:
                        task.pre_execute({"dag_run": SimpleNamespace(conf=conf)})
                        outcomes.append({"refused": False})
                    except AirflowFailException as exc:
                        outcomes.append({"refused": True, "fail": True, "message": str(exc)})
                    except Exception as exc:  # noqa: BLE001 - reported: the test wants AirflowFailException
                        outcomes.append({"refused": True, "fail": False, "message": repr(exc)})
            callback = (task.partial_kwargs if mapped else vars(task)).get("on_failure_callback")
            callback = callback[0] if isinstance(callback, list) and len(callback) == 1 else callback
            tasks[task.task_id] = {"csl_operator": checks, "conf": outcomes,
                                   "failure_callback": getattr(callback, "__qualname__", repr(callback)),
                                   **_param_uses(task, mapped, ParamValue)}
        dags[dag_id] = {
            "fileloc": Path(dag.fileloc).name,
            "owners": sorted({t.owner for t in dag.tasks}),
            "tags": sorted(dag.tags),
            "doc_md": bool(dag.doc_md and len(dag.doc_md) > 80),
            "schedule": str(getattr(dag, "schedule", None)),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": params,
            "refused": refused,
            "tasks": sorted(t.task_id for t in dag.tasks),
            "task_checks": tasks,
        }
    print(json.dumps({"import_errors": bag.import_errors, "files": files, "heavy_modules": heavy, "dags": dags},
                     default=str))


def _param_uses(task, mapped: bool, param_value: type) -> dict:
    """The Params a task's templated arguments take as values (``param(name)``), and any argument
    that is still template text reading a Param (``"{{ params.x }}"``: a string parsed back)."""
    fields = task.operator_class.template_fields if mapped else task.template_fields
    given = task.partial_kwargs if mapped else {name: getattr(task, name, None) for name in fields}
    refs, texts = [], []

    def walk(value) -> None:
        if isinstance(value, param_value):
            refs.append(value.name)
        elif isinstance(value, str):
            if "{{" in value and "params" in value:
                texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for name in fields:
        walk(given.get(name))
    return {"param_refs": sorted(set(refs)), "param_texts": texts}


def _accepts(param, value) -> bool:
    try:
        copy.copy(param).resolve(value)  # resolve() keeps the value it accepted
        return True
    except Exception:  # noqa: BLE001 - a refusal is the answer
        return False


if __name__ == "__main__":
    main()
