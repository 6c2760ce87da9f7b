"""Saving the modeling code with every model, so that it loads with only sentence-transformers installed.

sentence-transformers records each module in ``modules.json`` as ``type(module).__module__ + "." + class name``.
For a type outside its own namespace, ``SentenceTransformer(path_or_hub_id, trust_remote_code=True)`` asks
transformers' ``get_class_from_dynamic_module`` for it, which reads a *flat* ``file.ClassName``: it takes
``file.py`` from the model's root folder (local or Hub), copies it and its relative imports into the transformers
modules cache and imports it there. So the module classes in this package

* name their module by its bare file name (``__module__ = "encoder"``), so ``modules.json`` says
  ``encoder.UMarvelTransformer`` rather than ``umarvel_st.modeling.encoder.UMarvelTransformer``, which would need
  ``umarvel_st`` installed; and
* copy their file and its relative imports (:func:`copy_source`) into the model's root folder when saved.

The class keeps that name wherever it is imported from (this package or the modules cache), so a reloaded model
saves its code again the same way. The cost: pickle finds a class by ``__module__``, so these modules cannot be
pickled (e.g. by sentence-transformers' multi-process encoding pool); ``copy.deepcopy`` works.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files


def flat_module_name(module_name: str) -> str:
    """The bare file name of a module: ``"umarvel_st.modeling.encoder"`` -> ``"encoder"``.

    It is the same for the package and for a copy imported from the transformers modules cache
    (``"transformers_modules.<repo>.<revision>.encoder"``).
    """
    return module_name.rpartition(".")[2]


def copy_source(module_file: str | os.PathLike[str], model_root: str | os.PathLike[str]) -> None:
    """Copy a module's source file and, recursively, the files it imports relatively into ``model_root``, flat.

    Args:
        module_file: The ``__file__`` of the module that defines a saved class.
        model_root: The root folder of the saved model (where ``modules.json`` is), not a module's subfolder.
    """
    for source in [os.fspath(module_file), *get_relative_import_files(module_file)]:
        shutil.copyfile(source, Path(model_root) / Path(source).name)
