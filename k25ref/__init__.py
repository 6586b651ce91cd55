"""k25ref: a readable, exact NumPy/Numba reference implementation of Kimi K2.5."""
from k25ref.config import KimiK25Config, load_config
from k25ref.errors import CheckpointError, ConfigError, K25RefError, MediaError, PromptError
from k25ref.model import Model, load_model

__all__ = ["KimiK25Config", "load_config", "load_model", "Model",
           "K25RefError", "ConfigError", "CheckpointError", "MediaError", "PromptError"]
