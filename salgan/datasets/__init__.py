"""Raw dataset layouts: one module per dataset's tree (salicon.py: SALICON's, which download writes and
prepare reads)."""
