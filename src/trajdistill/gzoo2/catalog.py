"""Reading and validating the GZ2 catalog (CSV, CSV.gz or FITS) and the image mapping table.

Only the columns the tree needs are converted, so a 250k-row, 228-column table costs
one pass of the csv module. Every rejection names the file and the column, and for a
bad value the line (CSV, header = line 1) or row (FITS, first data row = 1).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import progress as progress_out
from ..data.base import DataError
from .kaggle import is_kaggle, kaggle_columns, kaggle_fractions

# main sample / Hart 2016 use dr7objid, Stripe 82 objid, the Kaggle challenge table GalaxyID
ID_COLUMNS = ("dr7objid", "objid", "galaxyid")


@dataclass
class Catalog:
    path: Path
    id_column: str
    ids: np.ndarray                      # int64 (N,)
    values: dict[str, np.ndarray]        # requested column -> float64 (N,)
    samples: np.ndarray | None = None    # the `sample` column when present (str)
    where: list[str] = field(default_factory=list)  # "line 7" / "row 6", for messages

    def __len__(self) -> int:
        return len(self.ids)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _is_fits(path: Path) -> bool:
    # Decided by content, not by name: FITS files start with the SIMPLE card.
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        return f.read(9) == b"SIMPLE  ="


@contextmanager
def _text_errors(path: Path):
    """Bytes that are not a UTF-8 CSV, or a cut .gz, named by file (not a codec traceback)."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a "
                        "CSV table") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: damaged or truncated gzip file ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _find_columns(path: Path, header: list[str], wanted: list[str]) -> dict[str, int]:
    """Column name -> index, case-insensitive; every missing column named in one error."""
    index = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = [c for c in wanted if c.lower() not in index]
    if missing:
        raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(m) for m in missing)} "
                        f"(the file has {len(header)} columns)")
    return {c: index[c.lower()] for c in wanted}


def _id_column(path: Path, header: list[str]) -> str:
    lower = {h.strip().lower() for h in header}
    for name in ID_COLUMNS:
        if name in lower:
            return name
    raise DataError(f"{path}: missing id column: expected 'dr7objid' or 'objid' (GZ2 tables), "
                    "or 'GalaxyID' (the Kaggle challenge table) in the header")


def _to_ids(path: Path, column: str, raw, where: list[str]) -> np.ndarray:
    try:
        return np.asarray(raw).astype(np.int64)
    except (ValueError, OverflowError, TypeError):
        pass
    out = np.empty(len(raw), np.int64)  # slow path: locate the offending value
    for i, v in enumerate(raw):
        try:
            out[i] = int(v)
        except (ValueError, OverflowError, TypeError):
            raise DataError(f"{path}, {where[i]}, column {column!r}: {v!r} is not an "
                            "integer object id (64-bit)") from None
    return out


def _to_floats(path: Path, column: str, raw, where: list[str]) -> np.ndarray:
    try:
        arr = np.asarray(raw).astype(np.float64)
    except (ValueError, TypeError):
        arr = np.empty(len(raw), np.float64)  # slow path: locate the offending value
        for i, v in enumerate(raw):
            try:
                arr[i] = float(v)
            except (ValueError, TypeError):
                raise DataError(f"{path}, {where[i]}, column {column!r}: {v!r} is not a "
                                "number") from None
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = bad[0]
        raise DataError(f"{path}, {where[i]}, column {column!r}: {raw[i]!r} is not a finite "
                        f"number ({bad.size} such value{'s' if bad.size > 1 else ''} in the column)")
    return arr


def _check_unique(path: Path, column: str, ids: np.ndarray, where: list[str]) -> None:
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise DataError(f"{path}, column {column!r}: duplicate object id {int(ids[a])} "
                        f"({where[a]} and {where[b]}; {dup.size} duplicate"
                        f"{'s' if dup.size > 1 else ''} in all)")


def _read_csv(path: Path, columns: list[str], progress: bool):
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a CSV header")
        id_col = _id_column(path, header)
        sample_col = "sample" if "sample" in {h.strip().lower() for h in header} else None
        wanted = [id_col] + ([sample_col] if sample_col else []) + list(columns)
        idx = _find_columns(path, header, wanted)
        order = [idx[c] for c in wanted]
        raw: list[list[str]] = [[] for _ in wanted]
        where: list[str] = []
        n_fields = len(header)
        for row in progress_out.bar(reader, desc=f"catalog {path.name}", unit="rows",
                                    enabled=progress, report=True):
            if len(row) != n_fields:
                if not row:
                    continue  # a blank line (e.g. at the end) is not data
                raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields, the header "
                                f"has {n_fields}")
            for dst, j in zip(raw, order):
                dst.append(row[j])
            where.append(f"line {reader.line_num}")
    cols = dict(zip(wanted, raw))
    samples = np.asarray([s.strip() for s in cols[sample_col]]) if sample_col else None
    return id_col, cols, samples, where


def _read_fits(path: Path, columns: list[str], progress: bool):
    try:
        from astropy.io import fits
    except ImportError as e:
        raise DataError(f"{path} is a FITS table: reading it needs astropy "
                        "(pip install 'trajdistill[fits]' or pip install astropy)") from e
    with fits.open(path, memmap=False) as hdul:
        tables = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
        if not tables:
            raise DataError(f"{path}: no table extension in this FITS file")
        hdu = tables[0]
        header = list(hdu.columns.names)
        id_col = _id_column(path, header)
        sample_col = "sample" if "sample" in {h.lower() for h in header} else None
        wanted = [id_col] + ([sample_col] if sample_col else []) + list(columns)
        idx = _find_columns(path, header, wanted)
        cols = {}
        for c in progress_out.bar(wanted, desc=f"catalog {path.name}", unit="columns",
                                  enabled=progress, report=True):
            arr = np.ma.getdata(hdu.data.field(idx[c]))
            if c != sample_col and c != id_col and arr.dtype.kind not in "iuf":
                raise DataError(f"{path}, column {c!r}: type {arr.dtype} is not numeric")
            cols[c] = np.array(arr)  # copy out of the (closing) file
    where = [f"row {i + 1}" for i in range(len(cols[id_col]))]
    def text(s):  # FITS string columns may come back as bytes
        return (s.decode("ascii", "replace") if isinstance(s, bytes) else str(s)).strip()
    samples = np.asarray([text(s) for s in cols[sample_col]]) if sample_col else None
    return id_col, cols, samples, where


def read_catalog(path: str | Path, columns: list[str], progress: bool = True) -> Catalog:
    """Read the id column (`dr7objid` or `objid`) and `columns` (as float64) of a catalog.

    The Kaggle challenge table (`GalaxyID`, `Class1.1` ...) is read too: its cumulative
    values become the per-task fractions of the requested GZ2 columns (kaggle.py).

    Raises DataError for a missing column, a non-numeric or non-finite value, a bad or
    duplicate object id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"catalog {path} does not exist")
    with _text_errors(path):
        reader = _read_fits if _is_fits(path) else _read_csv
        kaggle = reader is _read_csv and is_kaggle(_csv_header(path))
        wanted = kaggle_columns(path, columns) if kaggle else columns
        id_col, cols, samples, where = reader(path, wanted, progress)
    if not where:
        raise DataError(f"{path}: the catalog has no rows")
    ids = _to_ids(path, id_col, cols[id_col], where)
    _check_unique(path, id_col, ids, where)
    values = {c: _to_floats(path, c, cols[c], where) for c in wanted}
    if kaggle:
        values = kaggle_fractions(values, columns)
    return Catalog(path, id_col, ids, values, samples, where)


def _csv_header(path: Path) -> list[str]:
    with _open_text(path) as f:
        return next(csv.reader(f), None) or []


def read_mapping(path: str | Path, progress: bool = True) -> dict[int, list[tuple[str, str]]]:
    """The image archive's mapping table (`objid, sample, asset_id`) -> {objid: [(sample, asset_id)]}.

    An object may have several images (e.g. Stripe 82 normal and coadd depths); they are
    kept in file order, and the builder prefers the one whose sample matches the catalog's.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mapping table {path} does not exist")
    with _text_errors(path), _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header 'objid,sample,asset_id'")
        lower = [h.strip().lower() for h in header]
        id_col = _id_column(path, header)
        idx = _find_columns(path, header, [id_col, "asset_id"])
        j_sample = lower.index("sample") if "sample" in lower else None
        mapping: dict[int, list[tuple[str, str]]] = {}
        for row in progress_out.bar(reader, desc=f"mapping {path.name}", unit="rows",
                                    enabled=progress, report=True):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields, the header "
                                f"has {len(header)}")
            try:
                objid = int(row[idx[id_col]])
            except ValueError:
                raise DataError(f"{path}, line {reader.line_num}, column {id_col!r}: "
                                f"{row[idx[id_col]]!r} is not an integer object id") from None
            asset = row[idx["asset_id"]].strip()
            if not asset:
                raise DataError(f"{path}, line {reader.line_num}, column 'asset_id': empty")
            sample = row[j_sample].strip() if j_sample is not None else ""
            mapping.setdefault(objid, []).append((sample, asset))
    return mapping
