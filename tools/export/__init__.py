"""Model bundle exporter: see export_bundle.py."""
