"""Dataset adapters: one module per public dataset, each turning a raw download into the manifest."""

from mammokit.data.sources.base import DatasetSource, get_source, list_sources, register_source

__all__ = ["DatasetSource", "get_source", "list_sources", "register_source"]
