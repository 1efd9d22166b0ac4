"""The Airflow glue for ``csl``: connections → settings, thin operators, the UI plugin.

Business logic lives in ``include/csl``; this package only turns Airflow connections and
task context into ``csl`` calls, pushes small results to XCom and records runs.
"""

from airflow.plugins_manager import AirflowPlugin

from csl_airflow.reports import ReportLink, external_view, fastapi_app_entry
from csl_airflow.trigger_guard import middleware_entry


class CslPlugin(AirflowPlugin):
    """Registers the csl package's Airflow pieces: the performance reports app (a nav entry
    under Browse, behind Airflow's auth), the report task's extra link, and the API server's
    trigger guard (a csl DAG's run with an undeclared conf key is refused with HTTP 400)."""

    name = "csl"
    fastapi_apps = [fastapi_app_entry()]  # noqa: RUF012 - AirflowPlugin's own attribute names
    fastapi_root_middlewares = [middleware_entry()]  # noqa: RUF012
    external_views = [external_view]  # noqa: RUF012
    operator_extra_links = [ReportLink()]  # noqa: RUF012
