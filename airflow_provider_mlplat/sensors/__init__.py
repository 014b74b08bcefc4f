"""Sensors: one module per integration where waiting is needed."""
