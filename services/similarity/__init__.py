"""The similarity service: nearest artists by embedding, with pgvector."""
