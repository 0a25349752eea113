"""Errors that are the user's to fix: the CLI prints them without a traceback."""


class TokenmillError(Exception):
    """A wrong config, a missing input or another problem the message explains."""


class ConfigError(TokenmillError):
    """A configuration value or key is invalid; the message names it."""
