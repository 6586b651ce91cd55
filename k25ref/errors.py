"""The one error family k25ref raises for bad input: files, configs, media, prompts, non-finite numbers.

Every message names what was wrong and where (file, tensor, field), so the CLI can print it as one
line and exit with the code below. Anything else escaping k25ref is a bug in k25ref.
"""


class K25RefError(Exception):
    """Base class: bad input that k25ref detected and explains. CLI exit code 2 (1: the OS refused a read or
    write, an OSError; 2 is also every usage error, such as an option value out of range)."""

    exit_code = 2


class ConfigError(K25RefError):
    """config.json is missing, malformed, or describes an impossible model. CLI exit code 3."""

    exit_code = 3


class CheckpointError(K25RefError):
    """A safetensors shard or the index is malformed, or a tensor is missing/mis-shaped. Exit 4."""

    exit_code = 4


class MediaError(K25RefError):
    """An image or video cannot be decoded or is outside the documented limits. Exit 5."""

    exit_code = 5


class PromptError(K25RefError):
    """A prompt, chat message list or token sequence is unusable (empty, wrong ids, ...). Exit 6."""

    exit_code = 6


class NumericsError(K25RefError):
    """A forward pass produced NaN or infinite logits (bad weights, an overflow); names the first layer whose
    output was not finite. Exit 7."""

    exit_code = 7
