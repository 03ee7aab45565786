"""OPC-UA client driver: config models, value codec, certificates, driver, browser.

Only the config models are exported here: loading a config must not import asyncua (it
costs a process about 25 MB). The driver is ``drivers.opcua.driver.OpcUaDriver``; asyncua
is imported by ``driver``, ``session`` and ``browse`` only.
"""

from .config import (
    BrowsePath,
    Deadband,
    NodeRef,
    OpcUaCertificate,
    OpcUaConnection,
    OpcUaDevice,
    OpcUaPoint,
    OpcUaSecurity,
)

__all__ = [
    "BrowsePath",
    "Deadband",
    "NodeRef",
    "OpcUaCertificate",
    "OpcUaConnection",
    "OpcUaDevice",
    "OpcUaPoint",
    "OpcUaSecurity",
]
