"""Wire formats and transports: protobuf/gRPC definitions, peer transport, client APIs."""
