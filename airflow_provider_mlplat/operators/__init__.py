"""Operators: one module per integration."""
