"""HTTP scoring API: :func:`~seqchurn.serving.app.create_app` and the ``seqchurn serve`` command."""

from seqchurn.serving.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
