"""The HTTP/JSON API: the specification's REST endpoints over the gRPC services."""
