"""execution room."""
