"""Redis as the authority on cached profiles: keys, scripts and the invalidation protocol."""
