"""The command-line shell: one module per command over the Python API."""
