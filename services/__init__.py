"""Stylebase services, each run as its own process."""
