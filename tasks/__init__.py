"""Prefect tasks: thin wrappers over wmcore, one per pipeline step or I/O action."""
