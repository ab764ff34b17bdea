"""Tree ensembles compiled to native code for the request path (Treelite + TL2cgen with gcc: the path Triton's FIL
backend takes for tree models). The native model stays beside it for the margin, TreeSHAP and the batch sizes
where it is faster.

Measured here (2 cores, the registered models, one row / 1,000 rows): xgboost `inplace_predict` 132 µs / 1.7 ms
(both cores), compiled 16 µs / 4.7 ms (one thread); scikit-learn GradientBoosting `predict_proba` 214 µs /
3.7 ms, compiled 23 µs / 1.6 ms. xgboost batches beyond ~128 rows therefore stay on xgboost's own multi-threaded
predictor; scikit-learn batches always use the compiled trees. Batches of up to 16 rows skip TL2cgen's predictor
(a DMatrix and four C calls around the trees) for the library's own per-row `predict` (`RowFunction`): one row,
side by side on a loaded machine, 24 µs against 91 µs (xgboost) and 17 µs against 98 µs (scikit-learn); beyond
~16-32 rows the batch predictor's single pass is the cheaper one.

The shared library is cached under `<DATA_DIR>/compiled/`, keyed by model name, version, the native model file's
digest, the platform and the TL2cgen version, so a restart reuses it and a different model never does. A compiled
model must agree with the native one on a probe matrix (1e-6) before it serves.
"""
from __future__ import annotations

import ctypes
import math
import os
import pathlib
import platform
import tempfile
import threading

import numpy as np

from services.common import features as F
from services.common.model_registry import NativeModel

# Rows above which the native predictor is faster (see the module doc); None = compiled at every size.
NATIVE_ABOVE_ROWS = {"xgboost": 128, "sklearn": None}
PARITY_TOLERANCE = 1e-6
# Rows up to which the per-row entry beats TL2cgen's batch predictor (see `RowFunction`).
ROW_CALLS_UP_TO = 16


class RowFunction:
    """The library's own per-row entry, `void predict(union Entry *row, int pred_margin, T *result)`, called through
    ctypes on a row buffer each serving thread reuses: TL2cgen's `Predictor.predict` builds a DMatrix and an output
    array and makes four C calls per batch, ~4x the whole cost of one row this way (see the module doc).

    The ABI is TL2cgen's (`header.h` of the generated code): a row is `num_feature` unions of `int missing` and the
    threshold type (float32 or float64), a missing value marked by `missing == -1` in the union's first four bytes;
    `result` holds `num_target * num_class` values of the leaf output type, which `predict` adds to (so it starts at
    zero) before its sigmoid. Values are rounded to float32 first, as `tl2cgen.DMatrix(X, dtype="float32")` does, so
    both paths feed the trees the same numbers. Only single-output models (one target, one class) are handled."""

    _TYPES = {b"float32": np.float32, b"float64": np.float64}

    def __init__(self, library: pathlib.Path):
        lib = ctypes.CDLL(str(library))  # CDLL releases the GIL for the call
        lib.get_threshold_type.restype = lib.get_leaf_output_type.restype = ctypes.c_char_p
        lib.get_num_feature.restype = lib.get_num_target.restype = ctypes.c_int32
        num_class = ctypes.c_int32(0)
        lib.get_num_class(ctypes.byref(num_class))
        threshold, leaf = lib.get_threshold_type(), lib.get_leaf_output_type()
        if (lib.get_num_target() != 1 or num_class.value != 1 or threshold not in self._TYPES
                or leaf not in self._TYPES):
            raise RuntimeError(f"{library.name}: no single-output float model (targets {lib.get_num_target()}, "
                               f"classes {num_class.value}, types {threshold!r}/{leaf!r})")
        self.num_feature = lib.get_num_feature()
        self.entry_type, self.output_type = self._TYPES[threshold], self._TYPES[leaf]
        self._predict = lib.predict
        self._predict.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
        self._predict.restype = None
        self._lib = lib  # keeps the library loaded as long as its function
        self._local = threading.local()

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """This thread's row and result: the entries, their `missing` ints (the first four bytes of each), the
        result and both addresses (read once: `ndarray.ctypes` costs more than the trees of a row)."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            entries = np.zeros(self.num_feature, dtype=self.entry_type)
            result = np.zeros(1, dtype=self.output_type)
            missing = entries.view(np.int32)[::entries.itemsize // 4]
            buffers = self._local.buffers = (entries, missing, result, entries.ctypes.data, result.ctypes.data)
        return buffers

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """P(churn) of each row of X (n, num_feature), in the leaf output type, like `Predictor.predict`."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.num_feature:
            raise ValueError(f"expected rows of {self.num_feature} features, got shape {X.shape}")
        entries, missing, result, entries_at, result_at = self._buffers()
        nan = np.isnan(X) if math.isnan(X.sum()) else None  # the sum: one cheap test for the usual no-NaN case
        out = np.empty(len(X), dtype=self.output_type)
        for r in range(len(X)):
            entries[:] = X[r]
            if nan is not None:
                missing[nan[r]] = -1
            result[0] = 0
            self._predict(entries_at, 0, result_at)
            out[r] = result[0]
        return out


class CompiledModel:
    """P(churn) from the compiled trees: batches up to `ROW_CALLS_UP_TO` rows through the library's own per-row
    entry (`RowFunction`), larger ones through TL2cgen's batch predictor (one per serving thread: a predictor is not
    meant to be shared between concurrent calls); margin (with its probability) and contributions from the native
    model."""

    def __init__(self, native: NativeModel, library: pathlib.Path, native_above: int | None | str = "by flavour"):
        self.flavor = native.flavor
        self.native = native
        self.library = library
        self._native_above = NATIVE_ABOVE_ROWS.get(native.flavor) if native_above == "by flavour" else native_above
        self._rows = RowFunction(library)
        self._local = threading.local()

    def _predictor(self):
        predictor = getattr(self._local, "predictor", None)
        if predictor is None:
            import tl2cgen

            predictor = self._local.predictor = tl2cgen.Predictor(str(self.library), nthread=1)
        return predictor

    def probability(self, X: np.ndarray) -> np.ndarray:
        if len(X) <= ROW_CALLS_UP_TO:
            return self._rows(X)
        if self._native_above is not None and len(X) > self._native_above:
            return self.native.probability(X)
        import tl2cgen

        return np.asarray(self._predictor().predict(tl2cgen.DMatrix(X, dtype="float32"))).reshape(len(X))

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self.native.margin(X)

    def margin_and_probability(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.native.margin_and_probability(X)

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.native.contributions(X)


def cache_key(name: str, version: str, digest: str) -> str:
    import tl2cgen

    return (f"{name}-v{version}-{digest[:16]}-{platform.system()}-{platform.machine()}-"
            f"py{platform.python_version()}-tl2cgen{tl2cgen.__version__}").lower()


def _treelite_model(native: NativeModel):
    import treelite

    if native.flavor == "xgboost":
        return treelite.frontend.from_xgboost(native.booster)
    return treelite.sklearn.import_model(native.estimator)


def _build(native: NativeModel, path: pathlib.Path) -> None:
    """Compile into a temporary file beside `path`, then rename: a concurrent or crashed build leaves no half file."""
    import tl2cgen

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        built = pathlib.Path(tmp) / path.name
        tl2cgen.export_lib(_treelite_model(native), toolchain="gcc", libpath=str(built),
                           params={"parallel_comp": 8}, nthread=1, verbose=False)
        os.replace(built, path)


def probe_matrix(rows: int = 256, seed: int = 0) -> np.ndarray:
    """Valid encodings (one category per field, plausible numbers) to compare compiled and native answers."""
    rng = np.random.default_rng(seed)
    X = np.zeros((rows, F.N_ENCODED), dtype=np.float32)
    start = 0
    for spec in F.FEATURES:
        width = len(spec.encoded_names)
        if spec.kind == F.CATEGORICAL:
            X[np.arange(rows), start + rng.integers(0, width, rows)] = 1.0
        elif spec.kind == F.BOOLEAN:
            X[:, start] = rng.integers(0, 2, rows)
        else:
            X[:, start] = rng.uniform(0, 8000 if spec.name == "total_charges" else 120, rows).round(2)
        start += width
    return X


def compile_model(native: NativeModel, cache_dir: pathlib.Path, key: str) -> CompiledModel:
    """The compiled model for `native`, built once per key; raises when gcc, Treelite or the parity check fails
    (the caller falls back to the native model)."""
    path = cache_dir / f"{key}.so"
    if not path.exists():
        _build(native, path)
    compiled_only = CompiledModel(native, path, native_above=None)
    probe = probe_matrix()
    for rows in (probe[:1], probe):  # a single row and a batch: the compiled trees must agree with the native model
        compiled_p = np.asarray(compiled_only.probability(rows), dtype=np.float64)
        native_p = np.asarray(native.probability(rows), dtype=np.float64)
        worst = float(np.max(np.abs(compiled_p - native_p)))
        if not worst <= PARITY_TOLERANCE:
            raise RuntimeError(f"compiled model {path.name} differs from the native one by {worst:.3g}")
    return CompiledModel(native, path)
