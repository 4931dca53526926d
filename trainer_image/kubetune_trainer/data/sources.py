"""Read a dataset source into raw rows, each with its file:line.

Sources (``DatasetSource``): ``file://`` (relative to ``base_dir``), ``pvc://`` (the claim's mount,
see :mod:`kubetune_trainer.storage`), a mounted ConfigMap key, ``https://`` (and ``http://``,
which the API accepts too: use it only inside a trusted network), ``hf://`` (``datasets``) and
``s3://`` (``fsspec`` + ``s3fs``). A file holds JSONL or one JSON array (told apart by its first
character, whatever its name); a folder contributes every ``*.jsonl`` / ``*.json`` in it (not
recursive), sorted by name.

Every source is capped at ``KUBETUNE_DATA_MAX_BYTES`` bytes (default 1 GiB), so a wrong URL
cannot fill the pod's memory. Display names never carry URL credentials or query strings
(pre-signed URLs hold tokens there).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from kubetune.api import constants
from kubetune.api.finetunejob import DatasetSource
from kubetune_trainer import storage
from kubetune_trainer.data.errors import DataSourceError
from kubetune_trainer.data.records import Location, RawRow

ENV_MAX_BYTES = "KUBETUNE_DATA_MAX_BYTES"
DEFAULT_MAX_BYTES = 1 << 30
HTTP_TIMEOUT_SECONDS = 60.0  # connect / read / write, each
HTTP_DEADLINE_SECONDS = 3600.0  # the whole download
DATA_SUFFIXES = (".jsonl", ".json")

_WS = re.compile(r"\s*")


def max_source_bytes() -> int:
    """Largest source accepted, from ``KUBETUNE_DATA_MAX_BYTES`` (default 1 GiB)."""
    return int(os.environ.get(ENV_MAX_BYTES, DEFAULT_MAX_BYTES))


def describe_source(source: DatasetSource) -> str:
    """Display name of a source, safe to log: no credentials, no query string."""
    if source.config_map is not None:
        return f"configMap:{source.config_map.name}/{source.config_map.key}"
    return safe_uri(source.uri or "")


def safe_uri(uri: str) -> str:
    """``uri`` without user:password and query string."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def read_source(source: DatasetSource, base_dir: Path | None = None) -> list[RawRow]:
    """Every JSON value of ``source`` with its location; parse errors become rows with ``error``.

    Raises :class:`DataSourceError` when the source cannot be read at all.
    """
    if source.config_map is not None:
        path = storage.configmap_path(source.config_map)
        name = describe_source(source)
        if not path.is_file():
            raise DataSourceError(
                f"{name}: ConfigMap key not found at {path}; check the ConfigMap's name and key "
                f"(locally, set {constants.ENV_CONFIGMAP_ROOT} to the folder holding <name>/<key>)"
            )
        return parse_bytes(_read_local(path, name), name)
    uri = source.uri or ""
    scheme, _ = storage.split_uri(uri)
    if scheme in ("file", "pvc"):
        return _read_path(uri, storage.local_path(uri, base_dir))
    if scheme in ("http", "https"):
        return parse_bytes(fetch_http(uri), safe_uri(uri))
    if scheme == "hf":
        return read_hf(uri)
    if scheme == "s3":
        try:
            import s3fs  # noqa: F401
        except ImportError as exc:
            raise DataSourceError(
                f"{safe_uri(uri)}: reading s3:// needs the s3fs package; install it in the trainer "
                "image (pip install s3fs) or copy the data to a PVC and use pvc://"
            ) from exc
        return read_fsspec(uri)
    raise DataSourceError(
        f"{safe_uri(uri)}: unsupported scheme {scheme}://; use file, pvc, https, hf or s3"
    )


def _read_path(uri: str, path: Path) -> list[RawRow]:
    name = safe_uri(uri)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DataSourceError(f"{name}: folder {path} holds no *.jsonl or *.json file")
        rows: list[RawRow] = []
        for file in files:
            shown = f"{name.rstrip('/')}/{file.name}"
            rows.extend(parse_bytes(_read_local(file, shown), shown))
        return rows
    if not path.is_file():
        hint = ""
        if uri.startswith("pvc://"):
            hint = (
                f" (pvc://<claim>/<path> is read from {storage.pvc_root()}/<claim>/<path>; is the "
                f"claim mounted? locally, set {constants.ENV_PVC_ROOT})"
            )
        elif uri.startswith("file://"):
            hint = " (relative file:// paths are relative to the spec's folder)"
        raise DataSourceError(f"{name}: no such file or folder: {path}{hint}")
    return parse_bytes(_read_local(path, name), name)


def _read_local(path: Path, name: str) -> bytes:
    size = path.stat().st_size
    if size > max_source_bytes():
        raise DataSourceError(
            f"{name}: {size} bytes is over the {max_source_bytes()}-byte limit; split the data "
            f"into several files or raise {ENV_MAX_BYTES}"
        )
    return path.read_bytes()


def fetch_http(
    uri: str, *, timeout: float = HTTP_TIMEOUT_SECONDS, max_bytes: int | None = None
) -> bytes:
    """GET ``uri`` (redirects followed), streaming, stopping at ``max_bytes``."""
    import httpx

    limit = max_source_bytes() if max_bytes is None else max_bytes
    name = safe_uri(uri)
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + HTTP_DEADLINE_SECONDS
    try:
        with httpx.stream("GET", uri, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DataSourceError(
                    f"{name}: HTTP {response.status_code}; check the URL and that it is readable "
                    "without credentials from inside the cluster"
                )
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise DataSourceError(
                        f"{name}: more than {limit} bytes; split the data or raise {ENV_MAX_BYTES}"
                    )
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise DataSourceError(
                        f"{name}: download took over {HTTP_DEADLINE_SECONDS:.0f} s; copy the data "
                        "to a PVC and use pvc://"
                    )
    except httpx.HTTPError as exc:
        raise DataSourceError(
            f"{name}: download failed ({type(exc).__name__}: {exc}); check the URL and that the "
            "cluster can reach it, or copy the data to a PVC and use pvc://"
        ) from exc
    return b"".join(chunks)


def read_hf(uri: str) -> list[RawRow]:
    """Rows of ``hf://<dataset>[?split=train&config=<name>&revision=<rev>]`` via ``datasets``.

    A local folder path (``hf:///abs/folder``) goes through the same call, which is how it is
    tested offline. The row number stands in for the line.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DataSourceError(
            "reading hf:// datasets needs the datasets package (pip install datasets)"
        ) from exc
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = (parts.netloc + parts.path) if parts.netloc else parts.path
    split = query.get("split", "train")
    name = f"hf://{path}[{split}]"
    try:
        ds = datasets.load_dataset(
            path, name=query.get("config"), split=split, revision=query.get("revision")
        )
    except Exception as exc:  # datasets raises many kinds; all mean "cannot read this"
        raise DataSourceError(
            f"{name}: cannot load ({type(exc).__name__}: {exc}); check the dataset id, split and "
            "revision, that the cluster can reach the Hub, and HF_TOKEN for private datasets"
        ) from exc
    return [RawRow(Location(name, i + 1), dict(row)) for i, row in enumerate(ds)]


def read_fsspec(uri: str) -> list[RawRow]:
    """Rows of an fsspec URL (``s3://bucket/key`` or a folder prefix)."""
    import fsspec

    name = safe_uri(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.isdir(path):
            files = sorted(
                str(p) for p in fs.ls(path, detail=False) if str(p).endswith(DATA_SUFFIXES)
            )
            if not files:
                raise DataSourceError(f"{name}: holds no *.jsonl or *.json object")
        else:
            files = [path]
        rows: list[RawRow] = []
        for file in files:
            shown = (
                name
                if len(files) == 1 and file == path
                else f"{name.rstrip('/')}/{file.rsplit('/', 1)[-1]}"
            )
            size = fs.size(file) or 0
            if size > max_source_bytes():
                raise DataSourceError(
                    f"{shown}: {size} bytes is over the limit; raise {ENV_MAX_BYTES}"
                )
            with fs.open(file, "rb") as handle:
                rows.extend(parse_bytes(handle.read(), shown))
        return rows
    except DataSourceError:
        raise
    except Exception as exc:  # network, permissions, missing object
        raise DataSourceError(
            f"{name}: cannot read ({type(exc).__name__}: {exc}); check the bucket, key and credentials"
        ) from exc


def parse_bytes(data: bytes, name: str) -> list[RawRow]:
    """Parse JSONL, or one JSON array when the first non-blank character is ``[``."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.lstrip()[:1] == b"[":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            return [RawRow(Location(name, line), error="not UTF-8 text; re-save the file as UTF-8")]
        return parse_json_array(text, name)
    return parse_jsonl(data, name)


def parse_jsonl(data: bytes, name: str) -> list[RawRow]:
    """One row per non-blank line; bad lines become rows with ``error``."""
    rows: list[RawRow] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        loc = Location(name, number)
        try:
            rows.append(RawRow(loc, json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError:
            rows.append(RawRow(loc, error="not UTF-8 text; re-save the file as UTF-8"))
        except json.JSONDecodeError as exc:
            rows.append(RawRow(loc, error=f"invalid JSON: {exc.msg} at column {exc.colno}"))
    return rows


def parse_json_array(text: str, name: str) -> list[RawRow]:
    """Elements of a JSON array, each with the line it starts on.

    A syntax error stops the file there (JSON has no way to resync): one error row says where,
    and the elements before it are kept.
    """
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    pos, line, counted = 0, 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    def error(i: int, message: str) -> list[RawRow]:
        rows.append(
            RawRow(
                Location(name, line_at(i)),
                error=f"invalid JSON: {message}; the rest of the file was not read",
            )
        )
        return rows

    pos = _skip(text, _skip(text, 0) + 1)  # past "["
    if text[pos : pos + 1] == "]":
        return rows
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return error(exc.pos, exc.msg)
        rows.append(RawRow(Location(name, line_at(pos)), value))
        pos = _skip(text, end)
        char = text[pos : pos + 1]
        if char == "]":
            if text[_skip(text, pos + 1) :]:
                return error(_skip(text, pos + 1), "extra data after the closing ]")
            return rows
        if char != ",":
            return error(pos, "expected ',' or ']' between array elements")
        pos = _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos
