"""Central service: ingest, store and fleet registry."""
