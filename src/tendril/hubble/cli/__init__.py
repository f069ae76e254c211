"""A Python `hubble` CLI (observe, status, list) that behaves like the upstream hubble CLI v1.19.

Byte-for-byte compatibility is the point: scripts and people that know `hubble observe` should get
the same filters on the wire and the same text back from Tendril. The click wiring lives in
``tendril.cli.hubble_cmds``; everything reusable (flag parsing with pflag semantics, the
FlowFilter builder, printers, Go time/duration formats, the gRPC connection) lives here.
"""
