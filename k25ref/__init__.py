"""k25ref: a readable, exact NumPy/Numba reference implementation of Kimi K2.5."""
__version__ = "0.1.0"              # setup.cfg reads it from here

from k25ref.config import KimiK25Config, load_config
from k25ref.errors import CheckpointError, ConfigError, K25RefError, MediaError, NumericsError, PromptError
from k25ref.media import preprocess_image, preprocess_video
from k25ref.model import Model, default_model_path, load_model
from k25ref.tokenizer import Tokenizer

__all__ = ["KimiK25Config", "load_config", "load_model", "Model", "default_model_path", "Tokenizer",
           "preprocess_image", "preprocess_video",
           "K25RefError", "ConfigError", "CheckpointError", "MediaError", "NumericsError", "PromptError"]
