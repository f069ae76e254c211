"""Raw datapath events -> flow records (parsed once, in the agent).

`decode` (numpy) is imported where it is used, so light consumers such as the CLI only load `flow`.
"""

from tendril.hubble.parser.flow import EndpointMeta, Flow

__all__ = ["EndpointMeta", "Flow"]
