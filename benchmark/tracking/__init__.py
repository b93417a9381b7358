"""Everything that talks to MLflow: the store, the record's schema, the UI helpers."""
