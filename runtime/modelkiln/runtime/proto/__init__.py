"""The KServe v2 gRPC protocol: our .proto and the modules grpcio-tools generated from it."""
