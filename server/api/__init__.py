"""The HTTP API: one router module per resource (tasks, versions, payloads, reports, jobs, pools, keys,
health), the version pages, shared dependencies (``deps``) and the response views; the event-loop fast paths
read from ``hot``'s snapshots."""
