"""Simulated devices that speak the real protocols, for tests, test rigs and the demo."""
