"""The simulated city: gateways' worth of simulated devices, for the demo, the bench and the
hardware-in-the-loop tests, and the agent configs that read them.

A layer of its own between the CLI and the agent: it joins device profiles and agent configs
(``edge_agent.config``) with the simulators (``drivers.simulated``), which know neither.
``cli``, ``bench``, ``scripts`` and the tests import it; ``central`` and the agent's runtime
never do.

- ``simfile``: the sim file (``sim.yaml``) model, read with a line for every problem;
- ``plan``: a sim file resolved against profiles and scenarios into ``SimSpec``s that
  ``drivers.simulated.fleet.SimFleet`` runs, and a device's timeline without any server;
- ``configs``: one agent config per gateway, built from the typed config models and dumped;
- ``serve``: run the simulators, writing the configs once their ports are known.

``demo-sim.yaml`` is the README demo's city.
"""
