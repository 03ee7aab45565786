"""Agent configuration: models, and the loader that reports problems with line numbers."""

from edge_agent.config.loader import ConfigError, LoadedConfig, Problem, load_config, parse_config
from edge_agent.config.models import AgentConfig, BrokerUrl, DeviceConfig

__all__ = [
    "AgentConfig",
    "BrokerUrl",
    "ConfigError",
    "DeviceConfig",
    "LoadedConfig",
    "Problem",
    "load_config",
    "parse_config",
]
