"""Generated Hubble API package `peer` (modules produced by scripts/gen_proto.py)."""
