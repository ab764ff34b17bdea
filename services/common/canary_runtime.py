"""The canary weight's and the shadow percent's runtime contract, written once for the gateway renderer and the
monitoring service.

Envoy's route to the inference instances is a `weighted_clusters` split with `runtime_key_prefix = RUNTIME_KEY_PREFIX`;
Envoy then reads each entry's weight from the runtime key `<prefix>.<cluster name>`. Three runtime layers, lowest
first (`runtime_layers`): a static layer with the configured default, a disk layer under DATA_DIR that Envoy reads at
start (so a restart keeps the last weight), and the admin layer that `POST /runtime_modify` writes live.

Disk layer layout (Envoy's virtual file system: every '.' of a key is a directory, the last part a file holding the
value): `<data_dir>/envoy-runtime/current` is a symlink to a snapshot directory `snapshots/<n>/`, and each snapshot
holds `churn/routing/inference/<cluster>`. A new weight is written as a new snapshot and the symlink is swapped with
one atomic rename, the update Envoy's docs prescribe (Envoy also reloads the layer when the symlink moves).

The shadow percent (SHADOW_KEY, 0-100) is the `runtime_fraction` of the mirror policy on the production cluster: the
share of the requests production serves that Envoy also copies to the staging hosts. It lives in the same layers and
the same snapshots: every snapshot holds every persisted key, so writing one value keeps the other.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import threading

RUNTIME_KEY_PREFIX = "routing.inference"
# Names of the two entries of the weighted split (the clusters the canary route points at). The staging entry may be
# an aggregate cluster (staging hosts, then production) so a dead canary falls back; its name is still this one.
PRODUCTION_CLUSTER = "inference_production"
STAGING_CLUSTER = "inference_staging"
PRODUCTION_KEY = f"{RUNTIME_KEY_PREFIX}.{PRODUCTION_CLUSTER}"
STAGING_KEY = f"{RUNTIME_KEY_PREFIX}.{STAGING_CLUSTER}"
SHADOW_KEY = "routing.shadow_percent"

RUNTIME_DIRNAME = "envoy-runtime"
SYMLINK_NAME = "current"
SUBDIRECTORY = "churn"
SNAPSHOTS = "snapshots"
KEEP_SNAPSHOTS = 3
_WRITE = threading.Lock()  # a snapshot copies the other persisted key: one read-modify-write at a time


def runtime_dir(data_dir: os.PathLike | str) -> pathlib.Path:
    """The runtime root under the data folder (pass `settings.data_dir`)."""
    return pathlib.Path(data_dir) / RUNTIME_DIRNAME


def symlink_root(data_dir: os.PathLike | str) -> pathlib.Path:
    """What the disk layer's `symlink_root` names."""
    return runtime_dir(data_dir) / SYMLINK_NAME


def weights_for(staging_percent: int) -> dict[str, int]:
    """Both runtime keys for a staging share in percent (they always sum to 100)."""
    if not 0 <= staging_percent <= 100:
        raise ValueError(f"staging percent must be 0-100, got {staging_percent}")
    return {PRODUCTION_KEY: 100 - staging_percent, STAGING_KEY: staging_percent}


def shadow_for(percent: int) -> dict[str, int]:
    """The runtime key of the shadow percent."""
    if not 0 <= percent <= 100:
        raise ValueError(f"shadow percent must be 0-100, got {percent}")
    return {SHADOW_KEY: percent}


def key_path(root: pathlib.Path, key: str) -> pathlib.Path:
    """The file holding `key` inside a snapshot (or under the symlink root)."""
    return root.joinpath(SUBDIRECTORY, *key.split("."))


def runtime_layers(data_dir: os.PathLike | str, default_percent: int, default_shadow: int = 0) -> list[dict]:
    """The bootstrap `layered_runtime.layers` (static default → disk → admin), as dicts for the YAML renderer."""
    static: dict = {}
    for key, value in {**weights_for(default_percent), **shadow_for(default_shadow)}.items():
        node = static
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return [
        {"name": "static_defaults", "static_layer": static},
        {"name": "persisted_weight", "disk_layer": {"symlink_root": str(symlink_root(data_dir)),
                                                     "subdirectory": SUBDIRECTORY}},
        {"name": "admin", "admin_layer": {}},
    ]


def _read_key(data_dir: os.PathLike | str, key: str) -> int | None:
    try:
        value = int(key_path(symlink_root(data_dir), key).read_text().strip())
    except (OSError, ValueError):
        return None
    return value if 0 <= value <= 100 else None


def read_persisted(data_dir: os.PathLike | str) -> int | None:
    """The staging percent the disk layer holds, or None when nothing was persisted (or it is unreadable)."""
    return _read_key(data_dir, STAGING_KEY)


def read_persisted_shadow(data_dir: os.PathLike | str) -> int | None:
    """The shadow percent the disk layer holds, or None when none was persisted."""
    return _read_key(data_dir, SHADOW_KEY)


def write_persisted(data_dir: os.PathLike | str, staging_percent: int) -> pathlib.Path:
    """Persist a weight (keeping a persisted shadow percent); returns the snapshot directory."""
    with _WRITE:
        shadow = read_persisted_shadow(data_dir)
        return _write_snapshot(data_dir, {**weights_for(staging_percent),
                                          **(shadow_for(shadow) if shadow is not None else {})})


def write_persisted_shadow(data_dir: os.PathLike | str, percent: int) -> pathlib.Path:
    """Persist a shadow percent (keeping a persisted weight); returns the snapshot directory."""
    with _WRITE:
        weight = read_persisted(data_dir)
        return _write_snapshot(data_dir, {**(weights_for(weight) if weight is not None else {}),
                                          **shadow_for(percent)})


def _write_snapshot(data_dir: os.PathLike | str, weights: dict[str, int]) -> pathlib.Path:
    """Persist every key atomically: a complete new snapshot, then one rename swaps the `current` symlink onto it,
    so Envoy (at start or on the swap) never reads half a write."""
    base = runtime_dir(data_dir)
    snapshots = base / SNAPSHOTS
    snapshots.mkdir(parents=True, exist_ok=True)
    snapshot = pathlib.Path(tempfile.mkdtemp(prefix="w", dir=snapshots))
    for key, value in weights.items():
        path = key_path(snapshot, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            handle.write(f"{value}\n")
            handle.flush()
            os.fsync(handle.fileno())
    link = symlink_root(data_dir)
    tmp_link = base / f".{SYMLINK_NAME}.{os.getpid()}.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(pathlib.Path(SNAPSHOTS) / snapshot.name)  # relative: the data folder may move
    if link.exists() and not link.is_symlink():  # a plain directory from an older layout: replace it
        shutil.rmtree(link)
    os.replace(tmp_link, link)
    _fsync_dir(base)
    _prune(snapshots, keep=snapshot)
    return snapshot


def ensure_persisted(data_dir: os.PathLike | str, default_percent: int) -> int:
    """Make sure the disk layer exists (the renderer calls this before Envoy starts); returns the weight it holds.
    The shadow percent is persisted only once set (until then the static default applies)."""
    current = read_persisted(data_dir)
    if current is None:
        write_persisted(data_dir, default_percent)
        return default_percent
    return current


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(snapshots: pathlib.Path, keep: pathlib.Path) -> None:
    """Drop old snapshots, keeping the newest few (Envoy may still be reading the previous one)."""
    old = sorted((p for p in snapshots.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
    for path in old[:max(0, len(old) - (KEEP_SNAPSHOTS - 1))]:
        shutil.rmtree(path, ignore_errors=True)
