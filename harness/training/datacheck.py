"""A local data file checked before ``datasets`` reads it: one line naming the file, where, and what to do.

``datasets`` reports a non-UTF-8 file with a 58-line ``UnicodeDecodeError`` traceback and a file that is not
JSON with an 82-line ``DatasetGenerationError``; neither says which byte or line. ``check_file`` reads the
file once, as the format its suffix names, and raises ``ConfigError`` at the first problem:

* empty (or blank) file;
* text formats (``.json``, ``.jsonl``, ``.csv``): not UTF-8 (the byte offset of the first bad byte);
* ``.jsonl``: a line that is not JSON (line, example index, column, byte offset), or not a JSON object;
* ``.json``: neither one JSON document (a list of objects, or an object of columns) nor JSON lines;
* ``.parquet``: not a Parquet file (its footer does not read).

CSV syntax is left to ``datasets`` (pandas names the line); ``harness.training.data.load_raw`` turns any
error it raises into one line too. Files are streamed: a large ``.jsonl`` is not held in memory.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from harness.config import ConfigError

_TEXT_SUFFIXES = {".json", ".jsonl", ".csv"}


def _where(path: Path) -> str:
    return f"dataset.path: {path}"


def check_file(path: str | Path) -> None:
    """Raise ``ConfigError`` (one line) at the first problem of the local data file ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"{_where(path)}: file not found")
    if _is_blank(path):
        raise ConfigError(
            f"{_where(path)}: has no examples (the file is empty); point dataset.path at the data"
        )
    if suffix in _TEXT_SUFFIXES:
        check_utf8(path)
    if suffix == ".jsonl":
        check_json_lines(path)
    elif suffix == ".json":
        check_json(path)
    elif suffix == ".parquet":
        check_parquet(path)


def _is_blank(path: Path) -> bool:
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def check_utf8(path: Path) -> None:
    """Raise naming the byte offset of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = offset + max(e.start, 0)
                raise ConfigError(
                    f"{_where(path)}: not UTF-8 text (byte offset {bad}: {e.reason}, byte 0x{chunk[e.start]:02x}); "
                    "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{_where(path)}: not UTF-8 text (byte offset {offset}: {e.reason} at the end of the file); "
                "re-save the file as UTF-8"
            ) from None


def _line_error(path: Path, lineno: int, index: int, offset: int, what: str) -> ConfigError:
    return ConfigError(
        f"{_where(path)}: line {lineno} (example {index}, byte offset {offset}) {what}; a JSON-lines file "
        "holds one JSON object per line"
    )


def check_json_lines(path: Path) -> bool:
    """Every non-blank line is a JSON object; raise naming the first that is not. True when it checks."""
    offset, index = 0, 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    at = offset + len(raw.decode("utf-8")[: e.pos].encode("utf-8"))
                    raise _line_error(
                        path, lineno, index, at, f"is not JSON ({e.msg} at column {e.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise _line_error(path, lineno, index, offset, f"is a JSON {_kind(row)}, not an object")
                index += 1
            offset += len(raw)
    return True


def check_json(path: Path) -> None:
    """One JSON document (a list of objects, or an object whose values are columns) or JSON lines."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{"):  # maybe JSON lines in a .json file, as datasets allows
            try:
                check_json_lines(path)
                return
            except ConfigError:
                pass
        at = len(text[: e.pos].encode("utf-8"))
        raise ConfigError(
            f"{_where(path)}: not JSON ({e.msg} at line {e.lineno} column {e.colno}, byte offset {at}); a .json "
            "file holds a list of objects (or JSON lines: one object per line)"
        ) from None
    if not doc and isinstance(doc, list | dict):
        raise ConfigError(
            f"{_where(path)}: has no examples (an empty JSON {_kind(doc)}); point dataset.path at the data"
        )
    if isinstance(doc, list):
        for i, row in enumerate(doc):
            if not isinstance(row, dict):
                raise ConfigError(
                    f"{_where(path)}: example {i} is a JSON {_kind(row)}, not an object; a .json file holds a "
                    "list of objects"
                )
    elif not isinstance(doc, dict):
        raise ConfigError(f"{_where(path)}: holds a JSON {_kind(doc)}; expected a list of objects")


def check_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{_where(path)}: not a Parquet file ({first}); write it with pandas.DataFrame.to_parquet, or "
            "give the file the suffix of its format (.jsonl, .json, .csv)"
        ) from None


def _kind(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
