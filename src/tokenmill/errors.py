"""Errors that are the user's to fix: the CLI prints them without a traceback."""


class TokenmillError(Exception):
    """A wrong config, a missing input or another problem the message explains."""


class ConfigError(TokenmillError):
    """A configuration value or key is invalid; the message names it."""


def validation_problems(error, unknown: str = "key", prefix: tuple[str, ...] = ()) -> list[str]:
    """One line per problem of a pydantic ValidationError: "unknown key 'a.b'" for a key the model
    does not have, else "a.b: message" (without pydantic's "Value error, "); `prefix` leads each key."""
    problems = []
    for e in error.errors():
        key = ".".join(str(p) for p in (*prefix, *e["loc"]))
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"unknown {unknown} '{key}'" if e["type"] == "extra_forbidden" else f"{key}: {message}" if key else message)
    return problems
