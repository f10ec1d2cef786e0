"""The HTTP API and the search page: `create_app(engine_or_index, settings)`."""

from snapshop.serve.app import create_app

__all__ = ["create_app"]
