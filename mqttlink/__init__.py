"""mqttlink: the product's one way to talk MQTT, below every other package.

``mqttlink.url`` holds the broker's address and credentials as values that validate
themselves (config models build them; nothing there imports paho). ``mqttlink.session``
is the one session every client uses, and the only module that imports paho. It imports
nothing of ours: the agent, the drivers, the center and the CLI all stand on it.
"""
