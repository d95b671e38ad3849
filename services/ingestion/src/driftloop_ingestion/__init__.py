"""Driftloop ingestion service."""
