"""Central service: ingest, store and fleet registry.

It reaches the broker through ``mqttlink`` (the one MQTT session of the product) and
shares only the wire contract with the agent (``edge_agent.contract``): never the agent's
config models, rules or runtime.
"""
