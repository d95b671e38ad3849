"""Driftloop trainer service."""
