"""One resolver for every plugin: ``--model X`` loads ``models/X.py``, ``--trainfunc X`` ``loss/X.py``, ...

:func:`build` passes each of a plugin's explicit keyword parameters from the caller's runtime arguments, else from the
config option of the same name; nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from config import PLUGIN_KINDS as KINDS
from config import Config
from config import available_plugins as available
from dtdysv.errors import UserError

log = logging.getLogger(__name__)



class PluginError(UserError):
    pass


def load(kind: str, name: str) -> Callable[..., Any]:
    """The entry point (class or function) of plugin ``name``."""
    package, entry, flag = KINDS[kind]
    choices = available(kind)
    if name not in choices:
        raise PluginError(f"Unknown {kind} '{name}' ({flag}); available: {', '.join(choices)}.")
    module = importlib.import_module(f"{package}.{name}")
    if not hasattr(module, entry):
        raise PluginError(f"{package}/{name}.py has no '{entry}', the entry point every {kind} plugin defines.")
    return getattr(module, entry)


def options_of(kind: str, name: str) -> list[str]:
    """The config options that plugin ``name`` reads (its parameters that are options)."""
    params = inspect.signature(load(kind, name)).parameters
    return [pname for pname in params if pname in Config.__dataclass_fields__]


def build(kind: str, name: str, cfg: Config, **runtime: Any) -> Any:
    """Construct plugin ``name`` with the parameters it declares, taken from ``runtime`` then from ``cfg``."""
    factory = load(kind, name)
    params = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {}
    for pname, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if pname in runtime:
            kwargs[pname] = runtime[pname]
        elif hasattr(cfg, pname):
            kwargs[pname] = getattr(cfg, pname)
        elif param.default is param.empty:
            raise PluginError(f"{kind} '{name}' needs a parameter '{pname}' that is neither a config option nor "
                              f"given by the trainer.")
    log.debug("building %s %s with %s", kind, name, sorted(kwargs))
    try:
        return factory(**kwargs)
    except ValueError as err:  # settings the plugin cannot work with, e.g. a warm-up as long as the training
        raise PluginError(f"{KINDS[kind][2]} {name}: {err}.") from None
