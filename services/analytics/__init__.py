"""The analytics service: generation history and its statistics."""
