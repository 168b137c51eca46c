"""`lumen relay`: one API and UI over every node's agent.

discovery  which agents exist (--agent URLs, or Node objects / EndpointSlices in a cluster)
http       a small keep-alive HTTP/1.1 client for the fan-out's GETs
fanout     one query to every agent at once, agent SSE streams, per-agent health and metrics
wire       the agents' flow JSON, read exactly (microsecond times) and back into Flow
merge      pure logic: order by time across agents, limit after the merge, cursors, pairing the two
           ends of a cross-node flow
streams    live flows: one set of agent streams per filter, shared by its viewers
history    flows older than the agents hold, from the store they write to (ClickHouse)
service    each route's answer, naming the agents that did not answer
app        the FastAPI app: the agent's routes and the same web UI
"""
