"""Protobuf schemas (`*.proto`) and the modules generated from them by `make proto`.

The generated `*_pb2.py` / `*_pb2_grpc.py` files are committed so a plain `pip install` works
without grpcio-tools; tests/test_proto_generated.py fails when they drift from the schemas.
"""
