"""Protocol drivers: one package per protocol behind the interface in ``drivers.base``.

The MQTT driver and the simulated sensors connect through ``mqttlink``, the layer below.
"""
