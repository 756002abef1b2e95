"""Prefect flows: thin orchestration over the stage entry points (no ML logic lives here)."""
