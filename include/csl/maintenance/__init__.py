"""Database maintenance: the declared index catalog (``indexes``: diff, online builds, INVALID and
drift repair) and VACUUM/ANALYZE chosen by evidence (``vacuum``)."""
