"""Generated Hubble API package `relay` (modules produced by scripts/gen_proto.py)."""
