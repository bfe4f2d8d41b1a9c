"""Build the images and run the manifests' pods with rootful podman (``make test-containers``).

Not collected by ``make test`` (no ``test_*.py`` here): it needs root, apt and
several minutes. tests/containers/README.md says what it proves and what not.
"""
