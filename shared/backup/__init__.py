"""Base backups, continuous WAL archiving and point-in-time recovery with PostgreSQL's own tools.

Layout of BACKUP_DIR:
  base/<id>/        a plain-format pg_basebackup (with its backup_manifest and the WAL it needs)
  base/<id>.json    what the catalog knows about it (shared.backup.catalog)
  wal/              the WAL archive pg_receivewal writes (the current segment ends in .partial)
"""
