"""Stored estimators: the one place a fitted scikit-learn-like estimator is written into an artifact and read back.

`save_estimator(folder, obj)` writes classifier.skops, skops' format: a zip of JSON and arrays from which only the
types on an explicit list (scikit-learn's own, which skops trusts, and TRUSTED below) are ever built, so a file that
someone else wrote and re-sealed cannot run code when it is loaded; a type missing from the list is refused when the
estimator is saved, not when it is read. `load_estimator(folder)` checks the file's hash against the manifest and
builds it with that list.

ClinBench 0.1 and 0.2 stored pickles (classifier.joblib). A pickle runs whatever code it names when loaded, and the
manifest's hashes prove only that the file is the one listed, not who wrote it: anyone who can write the cache can seal
a file of their own. Such an artifact is refused (`PickledClassifier`) until the user confirms that the cache is theirs
(`python -m engine predict --convert-pickles`, or the button on the Classify page); `convert_pickle` then unpickles it
once, with a loader that builds only classes of scikit-learn, imbalanced-learn and ClinBench's own estimators and
finds classes stored under a module's old name at its new one (MOVED_MODULES), rewrites it as classifier.skops and
reseals the artifact. It is the only code in the engine that reads a pickle.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from engine.cache.artifacts import MANIFEST, read_manifest, seal, verified_file, verify_tree
from engine.cache.storage import atomic_dir
from engine.errors import ArtifactError

FILE = "classifier.skops"
PICKLE_FILE = "classifier.joblib"  # what ClinBench <= 0.2 wrote

# The types of ClinBench's stored estimators that skops does not trust by itself (scikit-learn's estimators it does):
# get_untrusted_types() of every estimator a method stores, as tests/test_estimator_files.py builds them.
TRUSTED = (
    "engine.methods.estimators.AdaptiveSMOTE",
    "engine.methods.estimators.OneVsRest",
    "engine.methods.estimators._Constant",
    "engine.methods.tfidf.TextOneVsRest",
    "engine.methods.linear_probe.LinearHead",
    "imblearn.pipeline.Pipeline",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.calibration._TemperatureScaling",
)
# Held only by estimators stored before inner splits kept duplicate groups apart (their calibrated SVCs kept a
# StratifiedKFold; now they keep the list of grouped splits): trusted so that caches already on disk still load.
TRUSTED_OLDER = ("sklearn.model_selection._split.StratifiedKFold",)

# Where the classes of stored estimators lived before the engine's packages: ClinBench 0.1 pickled from `engine.methods`
# (a module then), 0.2 from the flat modules. Read when such a pickle is converted; nothing is imported from these names.
MOVED_MODULES = {
    "engine.methods": "engine.methods.estimators",
    "engine.estimators": "engine.methods.estimators",
    "engine.reference": "engine.methods.tfidf",
    "engine.finetune.probe": "engine.methods.linear_probe",
}
_UNPICKLE_LOCK = threading.Lock()


class PickledClassifier(ArtifactError):
    """A classifier stored as a pickle by ClinBench 0.2 or earlier: it is loaded only after the user confirms (convert_pickle)."""


def save_estimator(folder: Path, obj: Any) -> None:
    """Write `obj` as classifier.skops into an artifact folder being written (sealed afterwards by artifacts.write)."""
    import skops.io as sio

    data = sio.dumps(obj)
    unknown = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED))
    if unknown:  # it could be written, but never read back: say so now
        raise ArtifactError(
            f"The fitted estimator holds type(s) {', '.join(unknown)} that stored classifiers may not hold; add them to TRUSTED "
            "in engine/cache/estimator_files.py if they build nothing but data."
        )
    (Path(folder) / FILE).write_bytes(data)


def is_pickled(folder: Path) -> bool:
    """Whether an artifact's classifier is a pickle of ClinBench <= 0.2 (listed in its manifest, and no classifier.skops)."""
    files = read_manifest(folder).get("files", {})
    return PICKLE_FILE in files and FILE not in files


def load_estimator(folder: Path) -> Any:
    """The estimator stored in an artifact folder, after its hash check, built from the trusted types only."""
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    folder = Path(folder)
    if is_pickled(folder):
        raise PickledClassifier(pickle_message(folder))
    path = verified_file(folder, FILE)
    try:
        return sio.load(path, trusted=[*TRUSTED, *TRUSTED_OLDER])
    except UntrustedTypesFoundException as exc:
        raise ArtifactError(
            f"{FILE} of {folder.name} holds types no ClinBench classifier holds ({exc}); it was not loaded. Delete {folder.name} "
            "and re-run its evaluation."
        ) from None
    except Exception as exc:  # a damaged zip or JSON inside it
        raise ArtifactError(
            f"{FILE} of {folder.name} cannot be read ({type(exc).__name__}); delete {folder.name} and re-run its evaluation."
        ) from None


def pickle_message(folder: Path) -> str:
    manifest = read_manifest(folder)
    what = f"{manifest.get('model', {}).get('name', '?')} · {manifest.get('method', '?')} [{Path(folder).name[:10]}]"
    return (
        f"{what} was stored by ClinBench 0.2 or earlier as a pickle ({PICKLE_FILE}), which can run any code when it is loaded; "
        "it is not loaded without your confirmation. If only you can write to this cache, convert it once to a format that "
        f"cannot run code: `python -m engine predict --evaluation {Path(folder).name[:10]} --convert-pickles --text ...` or "
        "the 'Convert' button on the Classify page."
    )


def convert_pickle(folder: Path) -> bool:
    """Rewrite a pickled classifier (ClinBench <= 0.2) as classifier.skops and reseal the artifact; False when there is none.
    Call it only when the user has confirmed that they trust the cache: it unpickles the file (with `_unpickle`'s limits).
    Every file is checked against the manifest first; the folder is replaced in one rename."""
    folder = Path(folder)
    if not is_pickled(folder):
        return False
    verify_tree(folder, "")
    manifest = read_manifest(folder)
    old = manifest["files"][PICKLE_FILE]
    estimator = _unpickle(verified_file(folder, PICKLE_FILE))
    kept = {k: v for k, v in manifest.items() if k not in ("producer", "schema", "files")}
    kept["converted"] = {"from": PICKLE_FILE, "sha256": old, "to": FILE, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_dir(folder) as tmp:
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif rel.as_posix() not in (PICKLE_FILE, MANIFEST) and not rel.as_posix().startswith("manifest."):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(path.read_bytes())
        save_estimator(tmp, estimator)
        seal(tmp, kept)
    return True


# What a pickle of a stored estimator may name besides classes of scikit-learn, imbalanced-learn and TRUSTED: numpy's
# array and scalar builders and a few plain containers. Anything else (os.system, builtins.eval, ...) stops the load.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("builtins", "object"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
}


_PICKLE_MODULES = ("sklearn", "imblearn", "numpy", *{t.rsplit(".", 1)[0] for t in TRUSTED})  # modules a pickle may import


def _allowed(module: str, name: str, obj: Any) -> bool:
    if (module, name) in _PICKLE_GLOBALS:
        return True
    if not isinstance(obj, type) or "." in name:
        return False
    import numpy as np

    if obj.__module__.startswith("numpy") and (issubclass(obj, np.dtype) or issubclass(obj, np.generic)):
        return True  # dtype classes (numpy.dtypes.Float64DType) and scalar types (numpy.float64)
    return obj.__module__.split(".")[0] in ("sklearn", "imblearn") or f"{obj.__module__}.{obj.__qualname__}" in TRUSTED


def _unpickle(path: Path) -> Any:
    """A joblib pickle of ClinBench <= 0.2, loaded with classes found under their new module names and every global it
    names checked against what a stored estimator can hold."""
    import joblib
    from joblib import numpy_pickle

    base = numpy_pickle.NumpyUnpickler

    class Limited(base):
        def find_class(self, module, name):
            module = MOVED_MODULES.get(module, module)
            known = (module, name) in _PICKLE_GLOBALS or any(module == m or module.startswith(m + ".") for m in _PICKLE_MODULES)
            if not known or "." in name or name.startswith("__"):  # (checked before the module is imported)
                raise ArtifactError(f"{path.name} names {module}.{name}, which no stored classifier holds; it was not loaded.")
            obj = super().find_class(module, name)
            if not _allowed(module, name, obj):
                raise ArtifactError(f"{path.name} names {module}.{name}, which no stored classifier holds; it was not loaded.")
            return obj

    with _UNPICKLE_LOCK:  # joblib builds its unpickler from a module global
        numpy_pickle.NumpyUnpickler = Limited
        try:
            return joblib.load(path)
        finally:
            numpy_pickle.NumpyUnpickler = base

