# syntax=docker/dockerfile:1
# The derived Airflow image the compose file (and the Helm chart) runs: the official image of the
# Airflow version requirements.txt pins, plus this project's wheel (the csl package with its SQL),
# the providers the DAGs use, and the DAGs and plugins themselves. requirements.txt is the freeze of
# the environment the test suite runs in; it is used as pip's constraints, so every package the
# install touches ends at the version that was tested (an image package outside that tree keeps the
# image's own pin). Build from the repository root: `docker compose build` or
#   docker build -t csl-pipelines-airflow:0.1.0 .
# No _PIP_ADDITIONAL_REQUIREMENTS: nothing is installed when a container starts.

# --- the wheel, built from the checkout (tests/test_build.py checks what it ships) -------------
FROM apache/airflow:3.3.2-python3.11 AS wheel
# made by the image's user (airflow), so setuptools may write its build folders in it
RUN mkdir /tmp/csl-build
WORKDIR /tmp/csl-build
COPY --chown=airflow:0 pyproject.toml ./
# include/csl/sql is a link to include/sql: both folders come along
COPY --chown=airflow:0 include/ include/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/csl-dist .

# --- the image ---------------------------------------------------------------------------------
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt /tmp/csl/requirements.txt
COPY --from=wheel --chown=airflow:0 /tmp/csl-dist/ /tmp/csl/dist/
# apache-airflow is named with its version so the resolver can never move it (the docker-stack
# docs' advice when extending the image); the providers are the ones the DAGs and the
# CeleryExecutor use (flower: the compose's optional Flower), at requirements.txt's versions;
# [data] brings the settlement gate's great-expectations and the reports' pandas.
RUN pip install --no-cache-dir --constraint /tmp/csl/requirements.txt \
        "apache-airflow==3.3.2" \
        "apache-airflow-providers-celery==3.26.0" \
        apache-airflow-providers-amazon \
        apache-airflow-providers-http \
        apache-airflow-providers-postgres \
        apache-airflow-providers-standard \
        flower \
        statsd \
        "$(ls /tmp/csl/dist/csl_pipelines-*.whl)[data]" \
    && rm -rf /tmp/csl

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 stack/airflow/pools.json /opt/airflow/pools.json
# mount points of the compose's named volumes: made here so a new volume is owned by airflow
RUN mkdir -p /opt/airflow/auth /opt/airflow/csl_reports
