"""Storage: the S3-compatible providers and everything done with their objects.

- ``providers`` — one interface over MinIO, AWS S3 and Supabase Storage; the reserved folders;
  ``providers_for(settings, names)``, the providers a run works on (the CLI, the glue, the health check)
- ``upload`` — the storage service: validated uploads, failover with a replicate-back record
- ``media`` — what an upload may be (extension, MIME type, magic bytes, size)
- ``references`` — which objects the platform's rows refer to
- ``integrity`` — the sweep: database inventory vs every provider's listing → findings
- ``cleanup`` — expired temporary uploads and old orphans → quarantine, capped; restore
- ``publication`` — the published bucket holds exactly the approved samples
- ``cli`` — ``python -m csl storage sweep|cleanup|restore|publish``

Importing the package is cheap (DAG files do): boto3 and psycopg load only where used, and the
modules that need psycopg (integrity, cleanup, publication, references) are imported by name.
"""

from csl.storage.media import UploadRejected
from csl.storage.providers import (
    HEALTH_PREFIX,
    PRIMARY,
    PUBLISHED_PREFIXES,
    QUARANTINE_PREFIX,
    RESERVED_PREFIXES,
    SHA256_META,
    TEMP_PREFIXES,
    ObjectInfo,
    StorageProvider,
    configured_buckets,
    providers_for,
    public_read_policy,
    reference_order,
    sha256_hex,
)
from csl.storage.upload import StorageService, UploadResult, check_upload_prefix, queue_replication

__all__ = [
    "HEALTH_PREFIX",
    "PRIMARY",
    "PUBLISHED_PREFIXES",
    "QUARANTINE_PREFIX",
    "RESERVED_PREFIXES",
    "SHA256_META",
    "TEMP_PREFIXES",
    "ObjectInfo",
    "StorageProvider",
    "StorageService",
    "UploadRejected",
    "UploadResult",
    "check_upload_prefix",
    "configured_buckets",
    "providers_for",
    "public_read_policy",
    "queue_replication",
    "reference_order",
    "sha256_hex",
]
