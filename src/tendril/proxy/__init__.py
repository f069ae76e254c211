"""The node's transparent L7 proxy: what the datapath redirects (bpf/include/proxy.h) lands here.

- `redirect.py`: the node-side plumbing: policy routing for marked packets, transparent listeners.
- `decide.py`: which L7 rules apply to a redirected connection (the endpoints' resolved policies).
- `http.py`: the HTTP/1.x proxy on h11: allow / 403 per request, keep-alive and pipelining.
- `flows.py`: each request and response as a Hubble L7 flow row in the agent's flow store.
"""
