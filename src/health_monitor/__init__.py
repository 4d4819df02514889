"""Fault injection and detection; publishes /diagnostics."""
