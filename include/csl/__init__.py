"""csl: the Cultural Sound Lab pipelines' domain package (plain Python, no Airflow).

Core, used by every capability: ``config`` (validated settings), ``db`` (pools, routing,
retries, health), ``errors``, ``migrations``, ``sqlfiles`` (SQL loaded by name), ``runs`` (run
records), ``money`` (ISO 4217 minor units), ``health`` (the platform health check), ``cli``.
Capabilities, one package each: ``storage``, ``maintenance``, ``settlement``, ``reports``, ``cdn``.
Dev/test data apart: ``devdata``. Command line: ``python -m csl --help``.
"""

__version__ = "0.1.0"
