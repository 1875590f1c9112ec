"""Stylebase's common package: settings, data access, gRPC plumbing and the embedded stack."""
