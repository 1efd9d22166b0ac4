"""csl: the Cultural Sound Lab pipelines' domain package (plain Python, no Airflow).

Modules: ``config`` (validated settings), ``db`` (pools, routing, retries, health),
``migrations``, ``storage`` (S3-compatible providers), ``edge`` (the caching edge),
``health`` (the platform health check), ``seed`` (synthetic data), ``runs`` (run records).
Command line: ``python -m csl --help``.
"""

__version__ = "0.1.0"
