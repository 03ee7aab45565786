"""Agent configuration: models, device profiles, and the loader that reports problems with
line numbers.

Checking is two passes: ``loader`` (the file on its own, the schema pass) and ``host``
(what the file names is there on this gateway, the host pass).

Imports run one way: ``host`` → ``loader`` → ``expand`` (devices built from profiles) →
``profiles`` (the profile format and library) → ``models`` → ``problems`` → ``yaml_lines``.
"""

from edge_agent.config.host import certificate_time_problems, check_host, host_problems
from edge_agent.config.loader import ConfigError, LoadedConfig, load_config, parse_config
from edge_agent.config.models import AgentConfig, DeviceConfig
from edge_agent.config.problems import Problem

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DeviceConfig",
    "LoadedConfig",
    "Problem",
    "certificate_time_problems",
    "check_host",
    "host_problems",
    "load_config",
    "parse_config",
]
