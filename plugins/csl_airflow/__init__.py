"""The Airflow glue for ``csl``: connections → settings, thin operators, the UI plugin.

Business logic lives in ``include/csl``; this package only turns Airflow connections and
task context into ``csl`` calls, pushes small results to XCom and records runs.
"""

from airflow.plugins_manager import AirflowPlugin


class CslPlugin(AirflowPlugin):
    """Registers the csl package's Airflow pieces (report views arrive with the report DAG)."""

    name = "csl"
