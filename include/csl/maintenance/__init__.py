"""Database maintenance: the declared index catalog (``indexes``) and, later, VACUUM/ANALYZE."""
