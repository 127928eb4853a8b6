"""A batch job's output folder: ``manifest.jsonl`` (locked, appended, fsynced) and the PNGs.

The manifest's fields and the resume rules are described in ``sdlite.batch``'s docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .batch_items import InputError, Item, clip

MANIFEST = "manifest.jsonl"
TEMP_PNG = re.compile(r"\..+\.png\.[0-9a-f]{8}\.tmp")  # save_png's temporary names


@dataclass
class GroupResult:
    """What one Pipeline call over a group gave: pixels and texts per item, or one error."""

    items: list[Item]
    pixels: list[Any] = field(default_factory=list)  # uint8 [H, W, 3] per item
    infotexts: list[str] = field(default_factory=list)  # A1111 parameters text per item
    timings: dict[str, float] = field(default_factory=dict)  # the whole call's
    error: str | None = None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # So that a rename survives a power loss; Windows cannot open folders and needs no such call.
    if os.name == "posix":
        _fsync_file(path)


class Manifest:
    """``OUT/manifest.jsonl``: read on start (a torn last line is cut off), then appended to."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.records: list[dict[str, Any]] = []
        self._file = open(self.path, "a+b")
        self._lock()
        self._file.seek(0)
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # kill -9 while a line was written: drop the fragment, or the next line would join it.
            self._file.truncate(end)
            os.fsync(self._file.fileno())
        for raw in data[:end].splitlines():
            try:
                rec = json.loads(raw)
            except (ValueError, RecursionError):  # a line edited by hand: not ours, skipped
                continue
            if isinstance(rec, dict):
                self.records.append(rec)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; do not run two jobs on one folder
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ValueError(f"--out: another sdlite batch is writing to {str(self.path.parent)!r}") from None

    def append(self, record: dict[str, Any]) -> None:
        record = {**record, "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        # ASCII: any str is written, a lone surrogate included (as "\ud800"); UTF-8 could not.
        self._file.write(json.dumps(record).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._file.close()

    def latest(self) -> dict[str, dict[str, Any]]:
        """id -> its latest record (records of items; input errors without an id excluded)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.records:
            if isinstance(rec.get("id"), str) and "input_sha256" not in rec:
                out[rec["id"]] = rec
        return out

    def input_errors(self) -> set[tuple[int, str]]:
        return {
            (rec.get("line"), rec["input_sha256"])
            for rec in self.records
            if isinstance(rec.get("input_sha256"), str)
        }

    def record_input_errors(self, errors: list[InputError]) -> None:
        """Each input error once while its line's text stays the same."""
        recorded = self.input_errors()
        for e in errors:
            if (e.line, e.sha256) not in recorded:
                rec = _record(e.id, e.line, status="error", error=e.error, parameters=None, seed=None)
                self.append({**rec, "input_sha256": e.sha256})


def remove_temp_pngs(out: Path) -> None:
    """save_png's temporary files, left by a kill mid-write (ours: the caller holds the lock)."""
    for leftover in out.iterdir():
        if TEMP_PNG.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)


def _same_params(a: Any, b: dict[str, Any]) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _complete_png(path: Path, sha256: Any) -> bool:
    """The PNG the manifest recorded (its hash); records without one: a PNG that reads to its end."""
    if not path.is_file():
        return False
    if isinstance(sha256, str):
        return file_sha256(path) == sha256
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decodes every row: a cut IDAT fails here (verify() checks chunk CRCs only)
    except Exception:
        return False
    return True


def is_done(item: Item, rec: dict[str, Any] | None, out: Path) -> bool:
    """Its latest record is ``ok`` with the same parameters, and its PNG is complete."""
    if rec is None or rec.get("status") != "ok" or not _same_params(rec.get("parameters"), item.params):
        return False
    return _complete_png(out / item.png, rec.get("png_sha256"))


def _record(item_id: str | None, line: int, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": item_id, "line": line, "status": "ok", "error": None}
    rec |= {"parameters": None, "seed": None, "timings": None, "png": None}
    rec.update(fields)
    if isinstance(rec["error"], str):
        rec["error"] = clip(rec["error"])
    return rec


def _item_record(item: Item, **fields: Any) -> dict[str, Any]:
    return _record(item.id, item.line, parameters=item.params, seed=item.params["seed"], **fields)


def _save(it: Item, px: Any, text: str, out: Path) -> str:
    """The item's PNG, renamed into place and fsynced; returns its sha256."""
    from PIL import Image

    from .images import save_png

    path = save_png(Image.fromarray(px), out / it.png, text)
    _fsync_file(path)
    _fsync_dir(out)
    return file_sha256(path)


def write_results(result: GroupResult, out: Path, manifest: Manifest) -> int:
    """PNGs, then their manifest lines; returns the number of failed items."""
    if result.error is not None:
        for it in result.items:
            manifest.append(_item_record(it, status="error", error=result.error))
        return len(result.items)
    n = len(result.items)
    share = {k: v / n for k, v in result.timings.items()}
    failed = 0
    for it, px, text in zip(result.items, result.pixels, result.infotexts, strict=True):
        t0 = time.perf_counter()
        try:
            digest = _save(it, px, text, out)
        # This item's file only: a write error, or a target that is not a regular file (images
        # refuses those with ValueError). A full disk fails the manifest's write next.
        except (OSError, ValueError) as err:
            manifest.append(_item_record(it, status="error", error=f"writing {it.png} failed: {err}"))
            failed += 1
            continue
        timings = {**share, "batch_images": n, "save": time.perf_counter() - t0}
        manifest.append(_item_record(it, timings=timings, png=it.png, png_sha256=digest))
    return failed
