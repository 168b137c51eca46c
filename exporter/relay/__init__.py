"""`lumen relay`: one API and UI over every node's agent.

discovery  which agents exist (--agent URLs, or Node objects / EndpointSlices in a cluster)
fanout     the HTTP client: one query to every agent, SSE streams, per-agent health and metrics
merge      pure logic: order by time across agents, limit after the merge, cursors, pairing the two
           ends of a cross-node flow
app        the FastAPI app: the agent's routes and the same web UI, answered from the fan-out
"""
