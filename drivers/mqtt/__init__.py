"""MQTT driver: wireless sensors and bridges that push to a local broker.

Only the config models are exported here: loading a config must not import paho's client
machinery for a gateway without MQTT devices. The driver is ``drivers.mqtt.driver.MqttDriver``.
"""

from .config import MqttConnection, MqttDevice, MqttPoint

__all__ = ["MqttConnection", "MqttDevice", "MqttPoint"]
