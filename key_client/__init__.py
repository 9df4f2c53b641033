"""key_client package."""
