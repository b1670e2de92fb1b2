"""Serving a model repository: the protocols over HTTP and gRPC, and the repository they read."""
