"""The profile store: artists, style profiles and research sources on PostgreSQL."""
