"""Prefect flows: wiring of tasks only (the logic lives in wmcore)."""
