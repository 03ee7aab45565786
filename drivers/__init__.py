"""Protocol drivers: one package per protocol behind the interface in ``drivers.base``."""
