"""The ``backup`` kind: backup sets on tarsnap or restic, and their retention.

``retention`` holds the pure retention decision (restic's ``forget`` policy applied to archive
names ``<set>-YYYYMMDD-HHMMSS``) that every backend obeys; the backends list, create and delete.
"""
