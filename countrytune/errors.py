"""Errors a user can fix: the CLI prints them without a traceback and exits with code 2."""


class UserError(Exception):
    """Bad input or configuration. The message says what is wrong and how to fix it."""
