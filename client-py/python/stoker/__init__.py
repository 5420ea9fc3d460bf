"""stoker: shared-memory client of the stoker data cache.

``Client(socket).read(path)`` returns bytes; ``read_view``/``read_many``
return zero-copy buffers (``memoryview(buf)``) into shared memory.
``StokerDataset`` (map-style) and ``StokerIterableDataset`` work with or
without PyTorch; with torch installed they subclass its Dataset classes and
shard by DataLoader worker. A client inherited across fork (DataLoader
workers) opens its own session on first use.
"""

import json
import os

from ._native import Buffer, Client as _Client

try:  # torch is optional
    from torch.utils.data import Dataset as _MapBase, IterableDataset as _IterBase
    from torch.utils.data import get_worker_info as _torch_worker_info
except ImportError:  # pragma: no cover - exercised when torch is absent
    _MapBase = object
    _IterBase = object
    _torch_worker_info = None

__all__ = ["Client", "Buffer", "StokerDataset", "StokerIterableDataset", "worker_shard"]


class Client(_Client):
    def stat(self, path):
        return json.loads(self.stat_json(path))

    def list(self, path):
        return json.loads(self.list_json(path))

    def walk(self, path):
        """Every file at or under `path`: entries named by full path, sorted."""
        return json.loads(self.walk_json(path))

    def engine_stats(self):
        return json.loads(self.engine_stats_json())

    def path_stat(self, path):
        """Cached fraction, pin and TTL of a file or prefix."""
        return json.loads(self.path_stat_json(path))


def worker_shard():
    """(worker id, number of workers): torch's DataLoader worker when there
    is one, else STOKER_WORKER_ID / STOKER_NUM_WORKERS, else (0, 1)."""
    if _torch_worker_info is not None:
        info = _torch_worker_info()
        if info is not None:
            return info.id, info.num_workers
    return int(os.environ.get("STOKER_WORKER_ID", 0)), int(os.environ.get("STOKER_NUM_WORKERS", 1))


class _Lazy:
    """One client per process, made on first use (safe across fork)."""

    def __init__(self, socket):
        self.socket = socket
        self._client = None
        self._pid = None

    def client(self):
        if self._client is None or self._pid != os.getpid():
            self._client = Client(self.socket)
            self._pid = os.getpid()
        return self._client

    def __getstate__(self):  # spawn-started workers connect on their own
        return {"socket": self.socket, "_client": None, "_pid": None}


class StokerDataset(_MapBase):
    """Map-style dataset over a list of paths: item i is the bytes of
    paths[i] (``bytes``, or a zero-copy buffer with ``zero_copy=True``),
    passed through ``transform`` when given."""

    def __init__(self, paths, socket=None, transform=None, zero_copy=False):
        self.paths = list(paths)
        self.transform = transform
        self.zero_copy = zero_copy
        self._lazy = _Lazy(socket)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        c = self._lazy.client()
        data = c.read_view(self.paths[i]) if self.zero_copy else c.read(self.paths[i])
        return self.transform(data) if self.transform else data


class StokerIterableDataset(_IterBase):
    """Iterable dataset over a list of paths, sharded by worker
    (``paths[id::num_workers]``), read in batches of ``batch`` files; with
    ``window`` the engine fetches that many files ahead of the reads in
    this worker's order. Yields ``(path, data)``."""

    def __init__(self, paths, socket=None, batch=64, window=None, transform=None, zero_copy=False):
        self.paths = list(paths)
        self.batch = max(1, batch)
        self.window = window
        self.transform = transform
        self.zero_copy = zero_copy
        self._lazy = _Lazy(socket)

    def __iter__(self):
        wid, n = worker_shard()
        mine = self.paths[wid::n]
        c = self._lazy.client()
        if self.window:
            c.plan_epoch(mine, self.window)
        for at in range(0, len(mine), self.batch):
            chunk = mine[at:at + self.batch]
            for p, buf in zip(chunk, c.read_many(chunk, copy=not self.zero_copy)):
                data = buf if self.zero_copy else bytes(buf)
                yield p, (self.transform(data) if self.transform else data)
