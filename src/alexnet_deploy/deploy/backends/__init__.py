"""One module per backend, registered by name in deploy/backend.py."""
