"""key_server package."""
