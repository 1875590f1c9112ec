"""Servers Stylebase starts by itself: PostgreSQL with pgvector from a pip package, redis-server."""
