"""Argument checks shared by constructors and config builders.

A constructor checks each argument it accepts with :func:`check_choice` or
:func:`check_positive` under the argument's name; what it raises is an
:class:`OptionError` that remembers that name, so that a builder reading a config can
report the config key instead (:meth:`OptionError.for_key`) without checking again.
"""
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any, Dict

__all__ = ["OptionError", "check_choice", "check_positive", "naming_keys"]


class OptionError(ValueError):
    """An argument (or config key) ``name`` whose ``value`` is not allowed; ``rule`` says
    what is (``"allowed values: [...]"``)."""

    def __init__(self, name: str, value: Any, rule: str):
        super().__init__(f"{name}={value!r} is not valid; {rule}")
        self.name, self.value, self.rule = name, value, rule

    def for_key(self, key: str) -> "OptionError":
        """The same error, naming the config ``key`` that set the value."""
        return OptionError(key, self.value, self.rule)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise :class:`OptionError` naming ``name`` if ``value`` is not ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise OptionError(name, value, f"allowed values: {allowed}")


def check_positive(name: str, value: int) -> None:
    """Raise :class:`OptionError` naming ``name`` unless ``value`` is an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OptionError(name, value, "it must be an integer >= 1")


@contextmanager
def naming_keys(keys: Dict[str, str]):
    """Turn an :class:`OptionError` about argument ``name`` raised inside the block into
    one about the config key ``keys[name]``."""
    try:
        yield
    except OptionError as e:
        if e.name not in keys:
            raise
        raise e.for_key(keys[e.name]) from None
