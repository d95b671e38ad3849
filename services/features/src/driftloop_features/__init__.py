"""Driftloop feature store service."""
