"""Driftloop model registry service."""
