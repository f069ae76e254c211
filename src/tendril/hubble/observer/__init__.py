"""The Hubble Observer gRPC surface (wire-compatible with Hubble v1)."""
