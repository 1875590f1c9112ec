"""gRPC plumbing every service uses: the server builder, interceptors and channels."""
