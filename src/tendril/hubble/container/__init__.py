"""The flow store: a fixed-capacity ring of flow rows."""

from tendril.hubble.container.ring import FlowRing, RingError

__all__ = ["FlowRing", "RingError"]
