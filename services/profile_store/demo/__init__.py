"""The demo dataset as data: artists.json (team-written) and embeddings.json (computed)."""
