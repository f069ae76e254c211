"""Generated Hubble API package `flow` (modules produced by scripts/gen_proto.py)."""
