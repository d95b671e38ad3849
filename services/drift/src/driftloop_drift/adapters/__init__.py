"""What the drift service reaches outside itself: its SQLite state and the registry."""
