"""Exceptions a user can act on: each message says what is wrong and how to fix it."""


class SaguaroError(Exception):
    """Base class of every error Saguaro raises on purpose."""


class ConfigError(SaguaroError, ValueError):
    """An engine or service setting is invalid."""


class ModelLoadError(SaguaroError):
    """A model folder is missing, incomplete or of an unsupported kind."""


class InvalidRequestError(SaguaroError, ValueError):
    """A request (prompt or sampling parameters) cannot be served as given."""
