"""Hooks: one module per integration; each owns a connection type."""
