"""Async triggers for deferrable waits and AssetWatchers."""
