"""Command-line front ends: ``fleet`` for operators, ``edge-agent`` for technicians."""
