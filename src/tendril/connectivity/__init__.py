"""`tendril connectivity test`: cilium-cli's connectivity test, run against a Tendril lab.

deploy.py     the lab, the test workloads (namespace tendril-test) and the world's servers
model.py      peers, expected results, actions, scenarios, tests and their outcomes
scenarios.py  who talks to whom (pod-to-pod, pod-to-service, pod-to-world, host-to-pod, ...)
policies.py   the policies of the tests (cilium-cli's manifests, adapted to the lab)
suite.py      the catalogue: tests, their policies, scenarios and expectations
actions.py    running an action's command in a pod (netns + cgroup) or a node's host netns
flows.py      Hubble Relay queries and flow validation (cilium-cli's flow requirements)
metrics.py    agent Prometheus metrics (forward counters, unexpected drops)
runner.py     --test selection, order, concurrency, checks, clean-up
report.py     console output in cilium-cli's style and the JSON report
"""
