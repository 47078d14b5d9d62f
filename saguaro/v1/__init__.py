"""Generated protobuf/gRPC modules of the saguaro.v1 contract (regenerate: scripts/gen_proto.py)."""
