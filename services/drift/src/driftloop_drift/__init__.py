"""Driftloop drift service."""
