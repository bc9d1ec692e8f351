"""Old import paths of the modules that moved into role packages (0.1 -> 0.2), kept for one release.

`import segformer.predict` still works and gives the module's names, with a DeprecationWarning that names the new
path. One table, one import hook: no stub files at the top level.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

MOVED = {
    "segformer.config": "segformer.model.config",
    "segformer.layers": "segformer.model.layers",
    "segformer.mit": "segformer.model.mit",
    "segformer.head": "segformer.model.head",
    "segformer.convert": "segformer.model.convert",
    "segformer.loading": "segformer.model.loading",
    "segformer.flops": "segformer.model.flops",
    "segformer.modelcard": "segformer.model.modelcard",
    "segformer.synth": "segformer.data.synth",
    "segformer.predict": "segformer.inference.files",
    "segformer.video": "segformer.inference.video",
    "segformer.metrics": "segformer.evaluation.metrics",
    "segformer.quantize": "segformer.export.int8",
    "segformer.app": "segformer.apps.app",
    "segformer.demo": "segformer.apps.demo",
    "segformer.benchmark": "segformer.apps.benchmark",
}


class _MovedModule(types.ModuleType):
    """Stands at an old path and forwards every attribute to the module at the new one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(MOVED[self.__name__]), name)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(MOVED[self.__name__]))


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: Any) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        importlib.import_module(MOVED[module.__name__])  # fail at import time, as the old module did


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
