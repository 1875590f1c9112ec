"""Similarity benchmark: FindSimilarArtists over gRPC on 10k and 100k artists, against numpy."""
