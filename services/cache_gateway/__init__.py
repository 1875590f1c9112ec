"""The cache gateway: the fast, coherent read path for style profiles."""
