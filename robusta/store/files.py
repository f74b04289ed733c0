"""Robusta's own files at URIs (file, s3, gs, abfs, hdfs, ...), through the pyarrow
filesystems pyiceberg's FileIO builds from the catalog properties under pyiceberg's own names
(``s3.endpoint``, ``s3.access-key-id``, ``s3.secret-access-key``, ``s3.region``, ...).

A :class:`Storage` is plain data (the properties), so Spark tasks receive it in their closure
and open the same files the driver names, on any host; the filesystems themselves are made
lazily and cached per process. Local files keep plain absolute paths, as tables made before
object storage hold them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_LOCAL = ("", "file")


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a file on this host's disk (a path or a file: URI)."""
    return urlparse(uri).scheme in _LOCAL or _windows_drive(uri)


def _windows_drive(uri: str) -> bool:
    return len(uri) > 1 and uri[1] == ":"


def normal(uri: str) -> str:
    """``uri`` in the form Robusta stores: file URIs as plain paths, others unchanged."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri


def join(uri: str, *parts: str) -> str:
    """``uri`` with path ``parts`` appended (``/``-separated on every filesystem)."""
    base = normal(uri).rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


@dataclass(frozen=True)
class Storage:
    """Files under URIs, opened through filesystems configured by ``properties``."""

    properties: tuple[tuple[str, str], ...] = ()
    _io: list[Any] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, properties: Mapping[str, str]) -> Storage:
        return cls(tuple(sorted((str(k), str(v)) for k, v in properties.items())))

    def __getstate__(self) -> tuple[tuple[str, str], ...]:
        return self.properties  # the filesystems are rebuilt where the storage lands

    def __setstate__(self, state: tuple[tuple[str, str], ...]) -> None:
        object.__setattr__(self, "properties", state)
        object.__setattr__(self, "_io", [])

    def locate(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem holding ``uri`` and the path of ``uri`` within it."""
        io = self._file_io()
        scheme, netloc, path = io.parse_location(normal(uri), dict(self.properties))
        return io.fs_by_scheme(scheme, netloc), path

    def _file_io(self) -> Any:
        if not self._io:
            with _IO_LOCK:
                if not self._io:
                    from pyiceberg.io.pyarrow import PyArrowFileIO

                    self._io.append(PyArrowFileIO(dict(self.properties)))
        return self._io[0]

    # ---- files ---------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes | memoryview | pa.Buffer) -> None:
        filesystem, path = self.locate(uri)
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            filesystem.create_dir(parent, recursive=True)
        with filesystem.open_output_stream(path) as out:
            out.write(data)

    def read_bytes(self, uri: str) -> bytes:
        filesystem, path = self.locate(uri)
        with filesystem.open_input_stream(path) as stream:
            return bytes(stream.read())

    def write_parquet(self, table: pa.Table, uri: str, **options: Any) -> None:
        """``table`` as one Parquet file at ``uri``, built in memory and written with one
        call (a small file's many small writes cost more than its data on object stores)."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, **options)
        self.write_bytes(uri, buffer.getvalue())

    def modified(self, uri: str) -> float | None:
        """When the file at ``uri`` was last written (epoch seconds), None when it is absent."""
        filesystem, path = self.locate(uri)
        info = filesystem.get_file_info(path)
        if info.type != pafs.FileType.File or info.mtime is None:
            return None
        return float(info.mtime.timestamp())

    def exists(self, uri: str) -> bool:
        filesystem, path = self.locate(uri)
        return bool(filesystem.get_file_info(path).type != pafs.FileType.NotFound)

    def files(self, folder: str, suffix: str = "") -> list[str]:
        """URIs of the files under ``folder`` (recursively) ending in ``suffix``, sorted;
        none when the folder does not exist."""
        return sorted(
            uri
            for uri, kind in self._listing(folder, recursive=True)
            if kind == pafs.FileType.File and uri.endswith(suffix)
        )

    def children(self, folder: str) -> list[tuple[str, bool]]:
        """``(name, is_folder)`` of what ``folder`` holds directly; none when it is absent."""
        return [
            (uri.rsplit("/", 1)[-1], kind == pafs.FileType.Directory)
            for uri, kind in self._listing(folder, recursive=False)
        ]

    def _listing(self, folder: str, *, recursive: bool) -> list[tuple[str, Any]]:
        filesystem, path = self.locate(folder)
        selector = pafs.FileSelector(path.rstrip("/"), allow_not_found=True, recursive=recursive)
        base = join(folder)
        root = path.rstrip("/")
        return [
            (base + info.path[len(root) :], info.type)
            for info in filesystem.get_file_info(selector)
        ]

    def delete(self, uri: str) -> None:
        """Remove the file at ``uri`` if it is there."""
        filesystem, path = self.locate(uri)
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_file(path)

    def delete_folder(self, uri: str) -> None:
        """Remove ``uri`` and everything under it, if it is there."""
        filesystem, path = self.locate(uri)
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            filesystem.delete_dir(path)

    # ---- Parquet -------------------------------------------------------------------------
    def read_schema(self, uri: str) -> pa.Schema:
        filesystem, path = self.locate(uri)
        return pq.read_schema(path, filesystem=filesystem)

    def read_table(self, uri: str, **options: Any) -> pa.Table:
        filesystem, path = self.locate(uri)
        return pq.read_table(path, filesystem=filesystem, **options)

    def dataset(self, uris: Sequence[str], **options: Any) -> Any:
        """A pyarrow dataset of Parquet files at ``uris`` (all on one filesystem)."""
        import pyarrow.dataset as ds

        located = [self.locate(u) for u in uris]
        filesystem = located[0][0] if located else pafs.LocalFileSystem()
        paths = [p for _, p in located]
        return ds.dataset(paths, filesystem=filesystem, format="parquet", **options)


_IO_LOCK = threading.Lock()
LOCAL = Storage()  # local paths only (and whatever needs no configuration)
