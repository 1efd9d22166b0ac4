"""
### Storage publication: approved samples, and only they, are public

The bucket that holds every object is **private**. The primary provider's *published bucket*
holds copies of the approved samples (`audio_samples.approved`); its policy lets anyone read
them, and the edge serves it and nothing else. Each run:

- **publishes** approved samples not yet copied, or changed since (server-side copy, then the
  copy's SHA-256 checked against the original's; a copy that does not match is deleted, never
  public, and fails the run);
- **withdraws** copies no approved row names any more (un-approved or deleted samples): the
  copy goes, the original stays, and the edge is purged of it;
- reports approved samples whose original is missing (their copy is kept) or whose key lies
  outside the published folders.

More than `max_withdrawals`, or more than `max_share` of what is published, refuses the run
before anything changes. `dry_run` lists what would change. Records:
`csl_ops.published_objects`, `csl_ops.publication_events`. Without Airflow:
`python -m csl storage publish`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param

from csl_airflow.dags import csl_dag
from csl_airflow.params import param
from csl_airflow.storage import StoragePublicationOperator


@csl_dag(
    "csl_storage_publication",
    schedule="*/10 * * * *",
    dagrun_timeout=pendulum.duration(minutes=30),
    tags=["storage", "publication"],
    doc_md=__doc__,
    retries=2,
    retry_delay=pendulum.duration(minutes=1),
    params={
        "dry_run": Param(False, type="boolean", description="List what would be published and withdrawn; change nothing."),
        "max_withdrawals": Param(1000, type="integer", minimum=0, maximum=1_000_000,
                                 description="More withdrawals than this refuses the run before anything changes."),
        "max_share": Param(0.1, type="number", exclusiveMinimum=0, maximum=1,
                           description="Withdrawing more than this share of the published samples refuses the run "
                                       "before anything changes."),
    },
)
def csl_storage_publication():
    StoragePublicationOperator(task_id="publish", dry_run=param("dry_run"), max_withdrawals=param("max_withdrawals"),
                               max_share=param("max_share"))


csl_storage_publication()
