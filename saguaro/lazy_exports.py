"""Package attributes resolved on first use (PEP 562), for packages whose exported names live in
modules that load torch: ``saguaro`` and ``saguaro.cache`` (their docstrings say why each must
import without it). One implementation, so both resolve, cache and refuse names alike."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict[str, object]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: an exported name (``exports``: name -> the module
    defining it) is imported the first time it is asked for and stored in ``namespace``, the
    package's globals, so later lookups skip the hook."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
