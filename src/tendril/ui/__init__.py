"""`tendril hubble ui`: a web UI like Hubble UI over Hubble Relay.

`query` validates the page's filters, `model` turns flows into table rows, the service map and the
bounded flow window, `relay` reads the relay over gRPC, `server` serves the JSON API, live updates
and the hand-written front end in `static/` (no framework, no build step).
"""

DEFAULT_RELAY = "127.0.0.1:4245"  # Hubble Relay, as `hubble` and `lab up` default to
DEFAULT_ADDRESS = "127.0.0.1"  # the UI is served to this machine only unless told otherwise
DEFAULT_PORT = 12000  # Hubble UI's port
