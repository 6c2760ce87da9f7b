"""Saving the modeling code with every model, so that it loads with only sentence-transformers installed.

sentence-transformers records each module in ``modules.json`` as ``type(module).__module__ + "." + class name``.
For a type outside its own namespace, ``SentenceTransformer(path_or_hub_id, trust_remote_code=True)`` asks
transformers' ``get_class_from_dynamic_module`` for it, which reads a *flat* ``file.ClassName``: it takes
``file.py`` from the model's root folder (local or Hub), copies it and its relative imports into the transformers
modules cache and imports it there. So:

* each U-MARVEL module copies its source file and relative imports into the model's root when it is saved
  (:func:`copy_source`); and
* a model built by this package names ``umarvel_st.modeling.encoder.UMarvelTransformer``, which would need
  ``umarvel_st`` installed, so :func:`flatten_module_types` rewrites it to ``encoder.UMarvelTransformer`` after
  saving. A model loaded from such a folder runs the copies from the modules cache, and sentence-transformers
  itself writes flat types for those when that model is saved again.

The classes keep their real ``__module__``, so models stay picklable (multi-process encoding).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

PACKAGE_PREFIX = __name__.rpartition(".")[0] + "."  # "umarvel_st.modeling."


def copy_source(module_file: str | os.PathLike[str], model_root: str | os.PathLike[str]) -> None:
    """Copy a module's source file and, recursively, the files it imports relatively into ``model_root``, flat.

    Args:
        module_file: The ``__file__`` of the module that defines a saved class.
        model_root: The root folder of the saved model (where ``modules.json`` is), not a module's subfolder.
    """
    for source in [os.fspath(module_file), *get_relative_import_files(module_file)]:
        shutil.copyfile(source, Path(model_root) / Path(source).name)


def flatten_module_types(model_root: str | os.PathLike[str]) -> None:
    """Rewrite this package's ``modules.json`` types to the flat ``file.ClassName`` form.

    Args:
        model_root: The folder a ``SentenceTransformer`` was just saved to (it holds ``modules.json``).
    """
    modules_path = Path(model_root) / "modules.json"
    modules = json.loads(modules_path.read_text(encoding="utf8"))
    for entry in modules:
        if entry["type"].startswith(PACKAGE_PREFIX):
            entry["type"] = entry["type"].removeprefix(PACKAGE_PREFIX)
    modules_path.write_text(json.dumps(modules, indent=2), encoding="utf8")
