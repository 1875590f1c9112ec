"""Analytics benchmark: bulk-loaded history, GetStats/GetArtistHistory latency, record rate."""
