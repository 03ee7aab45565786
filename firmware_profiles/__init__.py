"""Device profiles: how to read a device model at a firmware version."""
