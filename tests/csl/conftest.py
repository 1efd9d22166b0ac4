"""Fixtures shared by the csl tests."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from csl.config import Secret, StorageProviderSettings
from csl.devdata.seed import seed
from csl.migrations import migrate

MOTO_PROVIDER = "aws"  # the role name of the byte-order provider the tests add beside primary and fallback


@pytest.fixture
def platform_db(fresh_database, tmp_path):
    """A fresh database with the platform schema and the demo rows (no storage objects)."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        migrate(conn, components=("platform", "csl_ops"))
        seed(conn, scale_name="demo", seed_value=11, workdir=tmp_path / "seed", primary=None)
    return fresh_database


@pytest.fixture
def moto_settings(stack) -> StorageProviderSettings:
    """A third provider, ``aws``: kind s3 on the test stack's moto server, which lists in AWS's byte
    order and does not check SHA-256 upload checksums (so ``verifies_checksums=False``). Its
    bucket is made for the test and emptied and removed afterwards (moto keeps objects in memory;
    any key pair is accepted)."""
    from csl.storage import StorageProvider

    settings = StorageProviderSettings(name=MOTO_PROVIDER, kind="s3", endpoint_url=stack.urls()["moto"],
                                       bucket=f"csl-test-{uuid.uuid4().hex[:12]}", access_key=Secret("moto-key"),
                                       secret_key=Secret("moto-secret"), listing_order="byte",
                                       verifies_checksums=False)
    provider = StorageProvider(settings)
    provider.ensure_bucket()
    yield settings
    for info in list(provider.iter_objects()):
        provider.delete(info.key)
    provider.client.delete_bucket(Bucket=settings.bucket)


@pytest.fixture
def moto_provider(moto_settings):
    """The ``aws`` provider of ``moto_settings`` (its bucket made, removed afterwards)."""
    from csl.storage import StorageProvider

    return StorageProvider(moto_settings)
