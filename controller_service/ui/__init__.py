"""The run dashboard served by the controller under ``/ui/`` (read-only HTML and SVG).

``model`` is the :class:`RunSource` protocol the pages read, ``source`` its
adapter over today's run repository, ``charts``/``pages``/``plan`` the pure
renderers, ``auth`` the token rule and ``router`` the routes. The service
mounts it with ``app.include_router(ui_router(RepositoryRunSource(repository), token))``.
"""

from controller_service.ui.model import RunSource
from controller_service.ui.router import ui_router
from controller_service.ui.source import RepositoryRunSource

__all__ = ["RepositoryRunSource", "RunSource", "ui_router"]
