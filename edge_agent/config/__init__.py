"""Agent configuration: models, device profiles, and the loader that reports problems with
line numbers.

Imports run one way: ``loader`` → ``expand`` (devices built from profiles) → ``profiles``
(the profile format and library) → ``models`` → ``problems`` → ``yaml_lines``.
"""

from edge_agent.config.loader import ConfigError, LoadedConfig, load_config, parse_config
from edge_agent.config.models import AgentConfig, DeviceConfig
from edge_agent.config.problems import Problem

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DeviceConfig",
    "LoadedConfig",
    "Problem",
    "load_config",
    "parse_config",
]
