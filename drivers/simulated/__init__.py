"""Simulated devices that speak the real protocols, for tests, test rigs and the demo.

They know nothing of profiles or agent configs: the top-level ``sim`` package builds them
from profiles and writes the agent configs that read them. Nothing in the agent, the protocol
drivers or the simulation schema (``drivers.simulation``) imports them.
"""
