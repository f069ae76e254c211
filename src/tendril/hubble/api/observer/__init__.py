"""Generated Hubble API package `observer` (modules produced by scripts/gen_proto.py)."""
