"""Dev, test and bench data only, never production code: ``seed`` (deterministic synthetic
platform rows loaded with COPY, real objects, deliberate defects recorded in
``csl_ops.seed_runs``) and ``audio`` (small valid WAV/MP3 bodies)."""
