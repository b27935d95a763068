"""User-facing errors: the CLI prints them as one line (no traceback) and exits non-zero."""


class WsssError(Exception):
    """A problem with the user's input (file, label, config), not a bug. Message names the file and the problem."""


class DataError(WsssError):
    """A dataset file is missing, corrupt, mislabelled or outside the dataset root."""


class ConfigError(WsssError):
    """A params.yaml / command-line setting is wrong or inconsistent."""
