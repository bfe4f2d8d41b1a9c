"""The service's routes, one router per resource (FastAPI's "bigger applications")."""
