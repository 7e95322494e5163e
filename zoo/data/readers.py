"""Readers for interaction files, all returning one :class:`Interactions` table.

Supported formats (``.gz`` is read transparently, detected by the gzip magic bytes, not by the name: a text file
named ``.gz`` is read as text, a file neither gzip nor text is refused as not gzip; bzip2, zstd, xz and zip files are
refused, naming their compression):

``"atomic"``
    RecBole atomic ``.inter`` files: a typed header such as
    ``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``. Columns are found by name (the part
    before ``:``); other columns (rating, ...) are ignored.
``"movielens"``
    MovieLens ``ratings.dat``: ``user::item::rating::timestamp`` per line, no header.
``"delimited"``
    Plain TSV/CSV with a header naming the user column (``user_id``/``user``/``userid``/``uid``; Amazon's
    ``reviewerID``, RetailRocket's ``visitorid``), the item column (``item_id``/``item``/``itemid``/``movie_id``/
    ``movieid``/``iid``/``sid``; Amazon's ``parent_asin``/``asin``) and optionally the timestamp column
    (``timestamp``/``time``/``ts``/``unix_time``/``datetime``; Amazon's ``unixReviewTime``), Unix seconds, names in
    any case (:data:`COLUMN_ROLES`; the first found in a role's list is taken). Tab, comma or semicolon separated
    (taken from the header line). Other column names are given with ``columns`` (``{"user": "customer", "item":
    "product", "time": "when"}``; a role not given is found by its usual names; ``"time": None``: no time column).
    A header with columns left unused and no time column is warned about once (the row order is then the time
    order). A time column whose first value is an ISO 8601 date-time with a UTC offset (``1997-09-22T16:57:58-05:00``,
    ``...Z``) is read as such, exactly, every value then being one; a naive date-time (no offset: which time zone?)
    or another date written as text is refused, naming the ways to convert it.
``"parquet"``
    Parquet tables (pandas / polars / Spark / 🤗 datasets exports; needs ``pyarrow``, the ``[parquet]`` extra),
    detected by their magic bytes: columns found by name as in delimited files, only those read; integer or string
    ids; timestamps as numbers (seconds), Arrow timestamp / date columns, or strings of ISO 8601 date-times with a
    UTC offset (as in delimited files).
``"seq"``
    One user per line, items already in time order: header ``user_id<TAB>item_ids_chronological`` (required), then
    ``user<TAB>item item item ...`` (space separated). There are no timestamps: the order is the time order. A user
    on two lines, a user without items or comma-separated items are refused.

:func:`read_interactions` picks the format from the header / file name (``format="auto"``).

Ids are kept as they are in the file: ``int64`` arrays when every id of a column is a canonical integer (``7``, not
``07``, ``+7`` or ``7_0``: those stay distinct ids; blanks around an integer are not part of it: `` 7`` and ``" 7"``
are 7, as pandas reads numbers), else ``str`` arrays, compared code point by code point. Blanks (``str.isspace``:
spaces, tabs, ...) around an unquoted id are dropped (``1, 2, 3`` files, trailing spaces); a quoted field keeps them
(``" pad"`` is the id `` pad``, as pandas and RecBole read it). When dropping them would make two spellings one id
(`` pad`` and ``pad`` -- or ``"pad"`` -- in one column), or one spelling two ids (`` pad`` quoted on one line, not
on another), the file is refused, naming the column, both spellings and a line of each: ids are never merged
silently (quote the ids whose blanks are part of them; the MovieLens, ``.seq`` and Parquet readers have no quoting:
there, remove the blanks). An empty or blank id is refused. Every line must have the header's number of fields; the
first line that does not is named. Lines of blanks only (spaces, tabs) are blank lines, skipped wherever they are. A
field that starts with ``"`` is CSV-quoted (any separator; a ``"`` after a blank does not start one): it must end
with its closing quote (``""`` for a quote inside) on its own line -- a quoted field cannot span lines (an id with a
line break cannot be read); an unbalanced quote is refused, naming its line (it would swallow the next lines). A
``"`` inside a field is part of the id.

Text files are UTF-8 (a byte-order mark is dropped). A file with a byte that is not UTF-8 is refused, naming its line
and byte offset, except a MovieLens ``.dat`` file, which is read as latin-1 (the MovieLens files' encoding) unless it
mixes in UTF-8 characters (then refused too: reading it either way would change some ids). A NUL byte is refused.
Timestamps are float64: integers beyond 2**53 (nanoseconds since the epoch) are not all exact there, which is warned;
a float32 / float16 Parquet column (or in-memory array) beyond 2**24 / 2**11 s is refused, as the models refuse it:
that float has already rounded the seconds (float32 keeps Unix seconds to 128-s steps).
Rows keep the file order (for the ``seq`` format: user by user, each user's items in order).
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

FORMATS = ("atomic", "movielens", "delimited", "seq", "parquet")

#: the usual names of each role, matched in any case, the first found in the header taken: the common ones, then the
#: raw field names of public datasets whose values the readers read as they are meant -- Amazon reviews
#: (``reviewerID``, ``asin``; ``parent_asin`` in the 2023 release, the product that older releases call ``asin``;
#: ``unixReviewTime``, Unix seconds) and RetailRocket (``visitorid``; its ``timestamp``, like Amazon 2023's, is in
#: milliseconds: the time-aware models refuse that by name, the others read only its order). Not here: names whose
#: values are text dates (Yelp's and Steam's ``date``, Amazon's ``reviewTime``) or whose meaning varies by dataset
USER_COLUMNS = ("user_id", "user", "userid", "uid", "reviewerID", "visitorid")
ITEM_COLUMNS = ("item_id", "item", "itemid", "movie_id", "movieid", "iid", "sid", "parent_asin", "asin")
TIME_COLUMNS = ("timestamp", "time", "ts", "unix_time", "datetime", "unixReviewTime")
#: the roles ``columns=`` may name a header column for, and the names each is otherwise found by
COLUMN_ROLES = {"user": USER_COLUMNS, "item": ITEM_COLUMNS, "time": TIME_COLUMNS}


@dataclass
class Interactions:
    """A table of (user, item[, timestamp]) interactions in file order.

    Args:
        user: ``[N]`` external user ids (``int64`` when all ids are integers, else ``str``).
        item: ``[N]`` external item ids (``int64`` when all ids are integers, else ``str``).
            Arrays built in memory are checked (a ``ValueError`` names the source, column and row): 1-D; integers,
            strings (``str`` or object arrays of ``str``, none empty or blank) or whole floats (a pandas integer
            column with missing values is float: its whole values become ``int64``, a NaN or fractional id is
            refused, and so is one at or beyond 2**53 -- 2**24 for float32 -- where floats are not exact); no
            ``None``, bools, bytes, or strings mixed with integers.
        timestamp: ``[N]`` float64 seconds, or ``None`` when the source has no timestamps (then the row order
            within a user is the time order). Given in memory as numbers (seconds) or numpy ``datetime64`` of any
            unit (converted to seconds since the epoch, as the models read it: ``datetime64[D]`` is not 1 s a day);
            a ``ValueError`` names the row of a NaN, infinite or NaT value, and refuses float32 / float16 seconds
            beyond 2**24 / 2**11 (that float has rounded them: float32 keeps Unix seconds to 128-s steps; pass
            float64 or int64), ``timedelta64`` durations, ``datetime`` objects and non-numbers, naming the column
            and dtype as the models refuse them: bools (not read as 0 / 1 s), complex numbers, strings (even of
            digits: convert them first); integers beyond 2**53 (not all exact in float64: nanoseconds since the
            epoch) are warned.
        source: where the rows came from (a path), for messages.
        format: the reader format that produced the rows (``""`` when built in memory).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray | None = None
    source: str = "<memory>"
    format: str = ""

    def __post_init__(self):
        self.user = _id_array(self.user, "user", self.source)
        self.item = _id_array(self.item, "item", self.source)
        if self.timestamp is not None:
            try:
                raw = np.asarray(self.timestamp)
            except (TypeError, ValueError) as e:              # numpy's "inhomogeneous shape": a ragged nested list
                raise ValueError(f"{self.source}: the timestamp column is not numbers (seconds): {e}") from None
            if raw.ndim != 1:
                raise ValueError(f"{self.source}: the timestamps must be a 1-D array, got shape {list(raw.shape)}")
            self.timestamp = _time_seconds(raw, f"{self.source}: the timestamps",
                                           lambda i: f"{self.source}, row {i + 1}: timestamp {raw[i]}",
                                           holder=f"{self.source}: the timestamp column")
        n = len(self.user)
        if len(self.item) != n or (self.timestamp is not None and len(self.timestamp) != n):
            raise ValueError(f"{self.source}: user, item and timestamp columns have different lengths "
                             f"({len(self.user)}, {len(self.item)}, "
                             f"{None if self.timestamp is None else len(self.timestamp)})")
        if self.timestamp is not None:                # the file readers refuse these too, naming the line
            bad = np.flatnonzero(~np.isfinite(self.timestamp))
            if len(bad):
                i = int(bad[0])
                raise ValueError(f"{self.source}, row {i + 1}: timestamp {float(self.timestamp[i])!r} is not a finite "
                                 "number (NaN/inf)"
                                 + (f" ({len(bad)} such rows)" if len(bad) > 1 else ""))

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(np.unique(self.user))

    @property
    def n_items(self) -> int:
        return len(np.unique(self.item))

    def select(self, mask_or_index: np.ndarray) -> "Interactions":
        """Rows picked by a boolean mask ``[N]`` or an index array (order kept)."""
        ts = None if self.timestamp is None else self.timestamp[mask_or_index]
        return Interactions(self.user[mask_or_index], self.item[mask_or_index], ts, self.source, self.format)

    def __repr__(self) -> str:
        ts = "no timestamps" if self.timestamp is None else "timestamps"
        return (f"Interactions({len(self)} rows, {self.n_users} users, {self.n_items} items, {ts}, "
                f"source={self.source!r})")


_WHITESPACE_FROM = 0x1680      # the first non-Latin-1 whitespace code point (str.isspace): U+1680 OGHAM SPACE MARK


def _id_array(values, column: str, source: str) -> np.ndarray:
    """An :class:`Interactions` id column checked (see its docstring): ``ValueError`` naming ``source``, the column
    and the first bad row. The readers' ``int64`` and ``str`` arrays pass at the cost of a comparison or two."""
    a = np.asarray(values)
    kind = a.dtype.kind

    def bad(i: int, problem: str):
        return ValueError(f"{source}, row {i + 1}, column {column!r}: {problem}")

    if a.ndim != 1:
        raise ValueError(f"{source}: the {column} ids must be a 1-D array, got shape {list(a.shape)}")
    if kind in "iu" or len(a) == 0:
        return a
    if kind == "U":
        # empty and blank ids start with a code point <= U+0020 (empty: 0), U+0085, U+00A0 or >= U+1680: only those
        # few are looked at (str.isspace over every id would cost a pass in Python on numpy < 2)
        first = np.ascontiguousarray(a).view(np.uint32)[::max(1, a.dtype.itemsize // 4)]
        maybe = np.flatnonzero((first <= 0x20) | (first == 0x85) | (first == 0xA0) | (first >= _WHITESPACE_FROM))
        for i in maybe:
            if not str(a[i]).strip():
                raise bad(int(i), f"empty id {str(a[i])!r}")
        return a
    if kind == "f":
        whole = np.isfinite(a) & (np.floor(a) == a) & (np.abs(a) < 2.0 ** 63)
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            raise bad(i, f"id {float(a[i])!r} is not an integer (NaN ids are missing values -- a pandas integer column "
                         "with missing values turns float: drop those rows first; fractional ids are not ids)")
        exact = 2 ** (np.finfo(a.dtype).nmant + 1)            # float64: 2**53; beyond, neighbouring ints share a float
        big = np.flatnonzero(np.abs(a) >= exact)
        if len(big):
            i = int(big[0])
            raise bad(i, f"id {int(a[i])} is a {a.dtype} at or beyond 2**{exact.bit_length() - 1}, where floats are "
                         "not exact (two ids there may be one float, and the id read back is not the one given): give "
                         "the column as int64 or as strings")
        return a.astype(np.int64)
    if kind == "O":
        from ..vocab import int_id

        n_str = 0
        for i, x in enumerate(a.tolist()):
            if isinstance(x, str):
                if not x.strip():
                    raise bad(i, f"empty id {x!r}")
                n_str += 1
            elif int_id(x) is None:
                raise bad(i, f"id {x!r} ({type(x).__name__}) is neither a string nor an integer")
        if n_str == len(a):
            return a
        if n_str:
            i = next(i for i, x in enumerate(a.tolist()) if isinstance(x, str) != isinstance(a[0], str))
            raise bad(i, f"id {a[i]!r} mixes strings and integers (row 1 holds {a[0]!r}); the ids of a column are "
                         "all integers or all strings")
        try:
            return np.array([int_id(x) for x in a.tolist()], dtype=np.int64)
        except OverflowError:
            raise ValueError(f"{source}: the {column} column holds integers beyond int64; give them as strings") \
                from None
    what = {"b": "bools", "S": "bytes (decode them to str)"}.get(kind, f"{a.dtype}")
    raise ValueError(f"{source}: the {column} ids are {what}; ids must be integers or strings")


def _time_seconds(values: np.ndarray, what: str, where, holder: str | None = None) -> np.ndarray:
    """Timestamps ``values`` (an array, any shape; ``[N]`` from the readers) -> float64 seconds of that shape, by the
    models' rules (``zoo.modeling_utils._as_seconds`` / ``_check_exact_seconds``, which ``export.timestamps.seconds``
    mirrors). The one timestamp check of the data layer: :class:`Interactions`, the Parquet reader,
    :class:`~zoo.data.split.SequenceDataset`, :class:`~zoo.data.split.EvalExamples`, the temporal split's cut times
    and :func:`~zoo.data.batching.training_windows` all read their timestamps through it.

    - ``datetime64`` of any unit (``[D]``, ``[m]``, ``[ns]``, ...) becomes seconds since the epoch (to the
      microsecond); a ``NaT`` is a ``ValueError`` naming its row (``where(i)``) and the count.
    - float32 / float16 values beyond the whole seconds their dtype holds exactly (2**24 s / 2**11 s) are a
      ``ValueError`` naming ``what`` and the dtype: that float has already rounded them (float32 keeps Unix seconds
      ~1.7e9 to 128-s steps), and widening them would keep the wrong gaps silently. Smaller values (whole-second
      offsets up to ~194 days in float32) are exact there and are widened, as the models accept them.
    - integers beyond 2**53 are warned (:func:`_warn_inexact_times`); float64 is returned as it is.
    - anything but real numbers and ``datetime64`` is a ``ValueError`` naming ``holder`` (a singular phrase, e.g.
      ``"src: the timestamp column"``; default ``what``) and the dtype, as the models refuse it (their
      ``TypeError``): bools (``float()`` reads them as 0 and 1 s), complex numbers, strings and bytes (even of
      digits), ``timedelta64`` durations, ``datetime`` objects and other objects; an object array of real numbers
      (a pandas object column) is read as float64.

    NaN / inf are left to the caller's finiteness check. ``where(i)`` names value ``i`` ("source, row 3: ...")."""
    values = np.asarray(values)
    holder = what if holder is None else holder
    kind = values.dtype.kind
    if kind == "m":                                     # durations in their own unit (a day would be 1)
        raise ValueError(f"{holder} holds {values.dtype} durations; pass Unix seconds (durations in seconds: "
                         "td / np.timedelta64(1, 's')) or numpy datetime64")
    if kind == "O":                                     # datetime / pandas Timestamp objects: not seconds
        when = next((v for v in values.flat if hasattr(v, "year")), None)
        if when is not None:
            raise ValueError(f"{holder} holds {type(when).__name__} objects ({when!r}); pass Unix seconds "
                             "(dt.timestamp()) or numpy datetime64")
        from ..modeling_utils import _as_seconds

        try:                                            # the models' rule: real numbers only (no bool, None, str)
            return _as_seconds(values, "its values").numpy().astype(np.float64, copy=False)
        except TypeError as e:
            raise ValueError(f"{holder} is not numbers (seconds): {e}; pass float64 or int64 Unix seconds or numpy "
                             "datetime64") from None
    if kind not in "iufM":                              # bool (read as 0 / 1 s), complex, str, bytes, void
        such = f" such as {values.flat[0].item()!r}" if values.size else ""
        raise ValueError(f"{holder} is not numbers (seconds): got dtype {values.dtype}{such}; pass float64 or int64 "
                         "Unix seconds or numpy datetime64")
    if kind == "M":
        from ..modeling_utils import _as_seconds

        nat = np.flatnonzero(np.isnat(values.reshape(-1)))
        if len(nat):
            raise ValueError(f"{where(int(nat[0]))} is a missing time"
                             + (f" ({len(nat)} such rows)" if len(nat) > 1 else ""))
        return _as_seconds(values, what).numpy()
    if kind == "f" and values.dtype.itemsize < 8 and values.size:
        import torch

        from ..modeling_utils import _check_exact_seconds

        # a native, writable copy: Arrow's arrays are read-only, and torch takes neither those nor a swapped byte order
        _check_exact_seconds(torch.from_numpy(np.array(values, dtype=values.dtype.newbyteorder("="))), what)
    elif kind in "iu" and values.size:
        _warn_inexact_times(values.reshape(-1), where, stacklevel=5)
    return values.astype(np.float64, copy=False)


def _warn_inexact_times(values: np.ndarray, where, stacklevel: int = 4) -> None:
    """Warn when integer timestamps ``values`` reach 2**53, beyond which float64 (the timestamps' type) does not hold
    every integer: times a few hundred units apart (nanoseconds at today's epoch) compare equal and lose their order.
    ``where(i)`` names value ``i`` ("source, row 3: timestamp 1700000000000000100")."""
    big = np.flatnonzero((values >= 2 ** 53) | (values <= -2 ** 53))
    if len(big):
        i = int(big[0])
        warnings.warn(f"{where(i)} is beyond 2**53 (timestamps beyond it: {len(big)}): float64 timestamps are not "
                      f"exact there (steps of {np.spacing(np.float64(abs(values[i]))):g}), so close times may compare "
                      "equal and lose their order; nanoseconds or microseconds since the epoch? Give seconds",
                      stacklevel=stacklevel)


# --------------------------------------------------------------------------- low level helpers
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
#: compressions told by their first bytes that are not read (gzip is): such a file is refused as what it is, not read
#: as text and refused for its first byte that is not UTF-8
_OTHER_COMPRESSION = {"bzip2": re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)"),
                      "zstd": re.compile(rb"\x28\xb5\x2f\xfd"),
                      "xz": re.compile(rb"\xfd7zXZ\x00"),
                      "zip": re.compile(rb"PK\x03\x04")}
#: name endings that promise a binary format the readers tell by its first bytes, not by the name: (format, first
#: bytes, the other fix). A file so named that is not in the format is read as text when it is text (the name lies
#: harmlessly), and refused naming the format, not its first byte that is not UTF-8, when it is not text either
_BINARY_SUFFIXES = {".gz": ("gzip", GZIP_MAGIC, "gzip it"),
                    ".parquet": ("Parquet", PARQUET_MAGIC, "write it again as Parquet")}


def _read_text(path: str) -> tuple[str, tuple[int, int, int] | None]:
    """Whole file as text; gzip detected by magic bytes (so a ``.gz`` name is not required, nor trusted: a text file
    named ``.gz`` is read as text; one neither gzip nor text is refused as not gzip). bzip2, zstd, xz and zip files,
    told by their first bytes too, are refused as compressions that are not read. UTF-8 (a byte-order mark dropped);
    a file that is not is decoded as latin-1 and ``(line, byte offset, byte)`` of its first byte that is not UTF-8
    comes back too (``None`` for UTF-8), for :func:`read_interactions` to refuse it or, for a MovieLens file, accept
    it (:func:`_check_encoding`). Line ends are ``\\n``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"interaction file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, expected an interaction file")
    with open(path, "rb") as f:
        raw = f.read()
    gzipped = raw[:2] == GZIP_MAGIC
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:   # cut short (EOFError) or damaged inside (zlib.error)
            raise ValueError(f"{path}: corrupt gzip file ({e})") from None
    else:
        other = next((kind for kind, magic in _OTHER_COMPRESSION.items() if magic.match(raw)), None)
        if other:
            raise ValueError(f"{path}: compressed with {other} (by its first bytes), which is not read (gzip is the "
                             "only compression read): decompress it, or recompress it with gzip")
    not_utf8 = None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        text = raw.decode("latin-1")  # MovieLens files are latin-1
        offset = e.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        before = text[:offset]
        not_utf8 = (before.count("\n") + before.count("\r") - before.count("\r\n") + 1, offset, raw[offset])
    promised = next((what for suffix, what in _BINARY_SUFFIXES.items() if path.lower().endswith(suffix)), None)
    if not gzipped and promised and (not_utf8 is not None or "\x00" in text):
        name, magic, fix = promised       # a name that lies about a binary file: say so, not "convert with iconv"
        raise ValueError(f"{path}: not a {name} file (its first bytes are {raw[:len(magic)].hex(' ') or 'none'}, not "
                         f"{name}'s {magic.hex(' ')}) and not UTF-8 text either: rename it or {fix}")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, not_utf8


_UTF8_IN_LATIN1 = re.compile("[\xc2-\xf4][\x80-\xbf]")   # a UTF-8 character's first two bytes, read as latin-1


def _check_encoding(path: str, text: str, fmt: str | None, not_utf8: tuple[int, int, int]) -> None:
    """A file that is not UTF-8 (``not_utf8``: :func:`_read_text`'s line, offset and byte) is read as latin-1 only
    in the ``movielens`` format (``fmt``), and only when it holds no UTF-8 characters: ``ValueError`` naming the
    file, line and byte otherwise (latin-1 would turn every UTF-8 id into other characters: 'café' into 'cafÃ©')."""
    line, offset, byte = not_utf8
    where = f"{path}, line {line}: byte 0x{byte:02x} (offset {offset}) is not UTF-8"
    if fmt != "movielens":
        raise ValueError(f"{where}; {fmt or 'interaction'} files are read as UTF-8 (only MovieLens .dat files may be "
                         "latin-1): convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    mixed = _UTF8_IN_LATIN1.search(text)
    if mixed:
        ml = text.count("\n", 0, mixed.start()) + 1
        raise ValueError(f"{where}, and line {ml} holds UTF-8 text: the file mixes encodings, so latin-1 (the "
                         "MovieLens files' encoding) would change its UTF-8 ids; convert it to one encoding (UTF-8)")


class _Where:
    """Token position -> ``"path, line N, column 'c'"`` (``line_numbers``: 1-based line of each token position when
    lines were skipped; default: consecutive lines starting at ``first_line``; ``unit``: ``"row"`` for Parquet).
    ``path``, ``column`` and ``line(i)`` are there for messages that name two lines."""

    def __init__(self, path: str, column: str, first_line: int, line_numbers=None, unit: str = "line"):
        self.path, self.column, self.first_line, self.line_numbers, self.unit = (path, column, first_line,
                                                                                 line_numbers, unit)

    def line(self, i: int) -> int:
        return int(self.line_numbers[i]) if self.line_numbers is not None else self.first_line + i

    def __call__(self, i: int) -> str:
        return f"{self.path}, {self.unit} {self.line(i)}, column {self.column!r}"


def _where(path: str, column: str, first_line: int, line_numbers=None) -> _Where:
    """Token position -> ``"path, line N, column 'c'"`` (see :class:`_Where`)."""
    return _Where(path, column, first_line, line_numbers)


_POW10 = 10 ** np.arange(1, 20, dtype=np.uint64)   # 10 .. 10**19: digits of |v| = 1 + searchsorted(_POW10, |v|)


def _canonical_ints(tokens: list[str], values: np.ndarray, ascii: bool = False) -> bool:
    """True when every token is the canonical spelling of its parsed ``values`` (``str(int(t)) == t``): no leading
    zeros, ``+``, ``_``, whitespace, ``-0`` or non-ASCII digits. int() accepts all of those, and each one only adds
    characters to the canonical spelling, so equal total lengths (plus ASCII-only) means every token is canonical.
    ``ascii``: the caller knows the tokens are ASCII (e.g. the whole file is)."""
    if not ascii and not "".join(tokens).isascii():
        return False
    mag = np.abs(values).astype(np.uint64)       # int64 min wraps to itself and casts to 2**63: still exact
    canonical = np.searchsorted(_POW10, mag, side="right") + 1 + (values < 0)
    return int(canonical.sum()) == sum(map(len, tokens))


def _ids(tokens: list[str], where=None, ascii: bool = False, quoted=None, quotable: bool = True) -> np.ndarray:
    """Id column ``[N]``: int64 when every token (blanks around it dropped) is a canonical integer, else a str array.

    ``007``, ``07`` and ``7`` are three different ids, so a column with any non-canonical integer spelling stays a
    str column (int() would merge them); blanks around an integer are not part of it (`` 7`` is 7, as pandas reads
    numbers). In a str column the blanks (``str.isspace``) around an unquoted token are dropped, those of a quoted
    one kept (``quoted(i)``: token ``i`` was a CSV-quoted field; ``None``: no token was); when dropping them would
    make two spellings one id, or one spelling two ids (quoted on one line, not on another), a ``ValueError`` names
    both with their lines (:func:`_check_blanks`), never merging them. An empty (or blank) id is refused
    (``where(i)``, a :class:`_Where`, names the line), never made an id. ``ascii``: the tokens are known to be ASCII
    (saves a pass over them); ``quotable``: the format has CSV quoting (the way out the message offers).
    """
    try:
        values = np.array(tokens, dtype=np.int64)   # same rules as int(); ~2x faster than fromiter(map(int))
    except (ValueError, OverflowError):
        values = None
    if values is not None and _canonical_ints(tokens, values, ascii):
        return values
    stripped = [t.strip() for t in tokens]
    if values is not None and _canonical_ints(stripped, values):   # " 7" is 7: surrounding blanks are not the id
        return values
    if "" in stripped:
        i = stripped.index("")
        raise ValueError(f"{where(i) if where else 'id column'}: empty id")
    if sum(map(len, stripped)) != sum(map(len, tokens)):           # some token had blanks around it (rare)
        _check_blanks(tokens, stripped, where, quoted, quotable)
    return np.array(stripped, dtype=str)


def _check_blanks(tokens: list[str], ids: list[str], where, quoted, quotable: bool) -> None:
    """Put back (in ``ids``, the ``tokens`` stripped) the blanks of the quoted tokens (``quoted(i)``), then refuse
    (``ValueError``) a column in which dropping the blanks of the unquoted ones changes which tokens are one id.

    Read as pandas reads them, each token is its own id (``tokens`` hold the quoted fields without their quotes);
    here an unquoted token loses its blanks. That is harmless unless it makes two spellings one id (`` pad`` and
    ``pad``, or ``pad`` quoted) -- two users' histories interleaved, silently -- or one spelling two ids (`` pad``
    quoted on one line, kept, and not on another, read as ``pad``). Both show as a pair of (id, token) that is not
    one-to-one; the message names the two spellings and a line of each. Only called when some token had blanks.
    """
    if quoted is not None:
        stripped = False
        for i in [i for i, (t, s) in enumerate(zip(tokens, ids)) if len(t) != len(s)]:
            if quoted(i):
                ids[i] = tokens[i]               # a quoted field's blanks are part of its id
            else:
                stripped = True
        if not stripped:
            return
    # one-to-one iff as many distinct ids as tokens (unquoted: the id is a function of the token), and with quoted
    # tokens as many distinct (id, token) pairs too (' pad' quoted and not: one token, two ids); C-level sets
    n = len(set(tokens))
    if len(set(ids)) == n and (quoted is None or len(set(zip(ids, tokens))) == n):
        return
    pairs = dict.fromkeys(zip(ids, tokens))      # (id, token), in the order first seen
    by_id, by_token = {}, {}
    for a, b in pairs:
        other = by_id.setdefault(a, (a, b))
        if other == (a, b):
            other = by_token.setdefault(b, (a, b))
        if other != (a, b):
            break
    else:  # pragma: no cover
        raise AssertionError("unreachable: (id, token) pairs not one-to-one, yet no two share an id or a token")
    first, second = other, (a, b)
    i = next(k for k, ab in enumerate(zip(ids, tokens)) if ab == first)
    j = next(k for k, ab in enumerate(zip(ids, tokens)) if ab == second)
    is_quoted = (lambda k: False) if quoted is None else quoted

    def spelled(k: int) -> str:
        return repr('"' + tokens[k].replace('"', '""') + '"' if is_quoted(k) else tokens[k])

    w = where if where is not None else _Where("<ids>", "id", 1)
    fix = ("quote the ids whose blanks are part of them (a quoted field keeps its blanks: '\" pad\"' is the id "
           "' pad'), or remove the blanks" if quotable else
           "remove the blanks around the ids (or make those ids differ otherwise); this format has no quoting")
    if first[0] == second[0]:
        problem = (f"column {w.column!r}: the ids {spelled(i)} ({w.unit} {w.line(i)}) and {spelled(j)} ({w.unit} "
                   f"{w.line(j)}) are both read as {ids[i]!r} (blanks around an unquoted id are dropped), which would "
                   "merge two ids into one silently")
    else:
        problem = (f"column {w.column!r}: the id {tokens[i]!r} is read as {ids[i]!r} on {w.unit} {w.line(i)} "
                   f"({spelled(i)}) and as {ids[j]!r} on {w.unit} {w.line(j)} ({spelled(j)}): blanks around an id are "
                   "dropped unless it is quoted, which would make one id two silently")
    raise ValueError(f"{w.path}: {problem}; {fix}")


#: a date written as text (ISO 8601 ``1997-09-22T16:57:58-05:00``, ``1997-09-22 16:57``, ``1997/09/22``)
_DATE_TEXT = re.compile(r"\d{4}[-/]\d{1,2}[-/]\d{1,2}")
#: an ISO 8601 date-time as the readers take it: date, ``T`` or a space, hh:mm[:ss[.ffffff]], then the UTC offset
#: (``Z``, ``+05:00``, ``-0500``; group 1, absent in a naive date-time, which is refused)
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?")
_CONVERT = ("convert the column to Unix seconds (e.g. pandas (pd.to_datetime(df[col], utc=True) - pd.Timestamp(0, "
            "tz='UTC')) // pd.Timedelta('1s')), or write Parquet with a timestamp column (read as seconds); a model "
            "that does not read time can ignore the column: --columns time=none (columns={'time': None})")


def _iso_normalised(m: re.Match) -> str:
    """The date-time of ``m`` (a full :data:`_ISO_TIME` match with an offset) as ``isoformat()`` writes it, which
    ``datetime.fromisoformat`` reads on every Python: a fraction padded to 6 digits (``.5`` -> ``.500000``, the
    same microseconds), ``Z`` as ``+00:00`` and the offset's colon inserted (``-0500`` -> ``-05:00``). Python 3.11+
    reads the text as written too, to the same date-time; 3.10 refuses the unpadded and colon-less forms."""
    body, offset = m.string[m.start():m.start(1)], m.group(1)
    whole, dot, fraction = body.partition(".")
    if dot:                                     # 1 to 6 digits (_ISO_TIME): right-padded they are microseconds
        body = f"{whole}.{fraction.ljust(6, '0')}"
    if offset == "Z":
        offset = "+00:00"
    elif ":" not in offset:                     # +HHMM
        offset = f"{offset[:3]}:{offset[3:]}"
    return body + offset


def _iso_seconds(tokens: list, where) -> np.ndarray:
    """``[N]`` float64 Unix seconds of ISO 8601 date-times with a UTC offset (``1997-09-22T16:57:58-05:00``,
    ``...Z``; :data:`_ISO_TIME`), converted exactly (to the microsecond: the offset applied, no local time zone
    consulted). ``ValueError`` naming the first value (``where(i)``) that is not one: a number among dates (one
    column holds one kind), another date format, or a naive date-time -- its time zone unknown, so its seconds
    too: the message says to add the offset (``Z`` for UTC)."""
    from datetime import datetime, timedelta, timezone

    epoch, second = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(seconds=1)
    out = np.empty(len(tokens), dtype=np.float64)
    for i, t in enumerate(tokens):
        text = t.strip()
        m = _ISO_TIME.fullmatch(text)
        if m is None:
            raise ValueError(f"{where(i)}: timestamp {t!r} is not an ISO 8601 date-time with a UTC offset like the "
                             "column's first ('1997-09-22T16:57:58-05:00', '...Z'): a time column holds Unix seconds "
                             f"or such date-times, one kind; {_CONVERT}")
        if m.group(1) is None:
            raise ValueError(f"{where(i)}: timestamp {t!r} is a date-time without a UTC offset, so its seconds are "
                             "unknown (which time zone?): add the offset ('Z' for UTC, or +HH:MM), or "
                             f"{_CONVERT}")
        try:
            out[i] = (datetime.fromisoformat(_iso_normalised(m)) - epoch) / second
        except ValueError as e:                                     # month 13, hour 25, ...
            raise ValueError(f"{where(i)}: timestamp {t!r} is not a valid date-time ({e})") from None
    return out


def _timestamps(tokens: list[str], path: str, column: str, first_line: int, line_numbers=None) -> np.ndarray:
    """Float64 timestamps: Unix seconds, or ISO 8601 date-times with a UTC offset (``Z``, ``+05:00``) when the
    column's first value is one (:func:`_iso_seconds`: every value then is one; a naive date-time is refused);
    ``ValueError`` naming file, line and column for the first non-numeric or NaN/inf value (a date as text names
    the conversion and ``--columns time=none``); a warning for values beyond 2**53 (not all exact in float64).

    ``line_numbers`` maps token position -> 1-based line number when lines were skipped (default: consecutive
    lines starting at ``first_line``).
    """
    where = _where(path, column, first_line, line_numbers)
    try:
        ts = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        ts = None
        if tokens and _ISO_TIME.fullmatch(tokens[0].strip()):   # a column of date-times: read as such, or refused
            return _iso_seconds(tokens, where)
    if ts is None or not np.isfinite(ts).all():
        for i, t in enumerate(tokens):           # the first bad line, whichever its problem
            try:
                v = float(t)
            except ValueError:
                raise ValueError(f"{where(i)}: timestamp {t!r} is not a number" + (
                    f" but a date as text: timestamps are Unix seconds or ISO 8601 date-times with a UTC offset; "
                    f"{_CONVERT}" if _DATE_TEXT.match(t.strip()) else "")) from None
            if not np.isfinite(v):
                raise ValueError(f"{where(i)}: timestamp {t!r} is not a finite number (NaN/inf)")
        raise AssertionError("unreachable: a timestamp failed to parse, then parsed")  # pragma: no cover
    if len(ts) and (ts.max() >= 2 ** 53 or ts.min() <= -2 ** 53):
        _warn_inexact_times(ts, lambda i: f"{where(i)}: timestamp {tokens[i].strip()}")
    return ts


def _first_line_named(e: Exception) -> float:
    """The first line number an error message names (``"path, line 7, column 'item': ..."``); inf when none."""
    m = re.search(r", (?:line|row) (\d+)\b", str(e))
    return int(m.group(1)) if m else float("inf")


def _seps_per_line_ok(body: str, sep: str, n_cols: int) -> bool:
    """True when every line of ``body`` holds exactly ``n_cols - 1`` separators ``sep`` (ASCII), counted over the
    bytes with numpy: a total count alone lets a row with a missing field cancel one with an extra field. Overlapping
    matches of a multi-character ``sep`` are counted too (an over-count, never an under-count), and a line that starts
    with its first or ends with its last character gives ``False`` (joining the lines with ``sep`` could fuse there:
    ``"4:" + "::" + "2"``)."""
    a = np.frombuffer(body.encode("utf-8"), dtype=np.uint8)  # "\n" / ASCII never occur inside a multi-byte char
    s = sep.encode()
    hit = a == s[0]
    for k in range(1, len(s)):
        hit[:-k] &= a[k:] == s[k]
        hit[len(hit) - k:] = False
    newline = a == 10
    if len(s) > 1 and ((newline[:-1] & (a[1:] == s[0])).any() or ((a[:-1] == s[-1]) & newline[1:]).any()):
        return False
    kind = newline[np.flatnonzero(hit | newline)]       # delimiters in order: True for a line end
    n_lines = int(kind.sum()) + 1
    # n_cols - 1 separators then a line end, line after line (the last line has no line end)
    return len(kind) == n_lines * n_cols - 1 and bool(kind[n_cols - 1::n_cols].all())


def _tokens(body: str, sep: str | None, n_cols: int) -> list[str] | None:
    """Row-major tokens of ``body`` (non-empty lines joined by newlines) when every line has exactly ``n_cols``
    fields, else ``None``."""
    n_lines = body.count("\n") + 1
    if sep is None:  # whitespace separated (rare): per-line check in Python
        if any(len(line.split()) != n_cols for line in body.split("\n")):
            return None
        return body.split()
    if _seps_per_line_ok(body, sep, n_cols):
        tokens = body.replace("\n", sep).split(sep)
        # the total is exact; the per-line separator count (>= the split count per line) then equals it line by line
        if len(tokens) == n_lines * n_cols:
            return tokens
    if len(sep) == 1:
        return None
    rows = [line.split(sep) for line in body.split("\n")]    # exact, per line ("::::" holds one empty field)
    return None if any(len(r) != n_cols for r in rows) else [t for r in rows for t in r]


def _split_rows(lines: list[str], sep: str | None, n_cols: int, path: str, first_line: int,
                line_numbers: np.ndarray | None = None) -> list[str]:
    """Row-major tokens of ``lines`` (``n_cols`` fields each); ``ValueError`` naming the first malformed line."""
    tokens = _tokens("\n".join(lines), sep, n_cols)
    if tokens is not None:
        return tokens
    for i, line in enumerate(lines):  # slow path only to build the message
        n = len(line.split(sep))
        if n != n_cols:
            ln = int(line_numbers[i]) if line_numbers is not None else first_line + i
            raise ValueError(f"{path}, line {ln}: expected {n_cols} fields, found {n}: {line[:80]!r}")
    raise ValueError(f"{path}: inconsistent number of fields")  # pragma: no cover


def _fast_tokens(text: str, start: int, sep: str, n_cols: int) -> list[str] | None:
    """Row-major tokens of the lines from index ``start`` on, in one C-level split; ``None`` when the body has
    blank lines, whitespace separators or ragged rows (the caller then takes the slow, line-aware path)."""
    pos = 0
    for _ in range(start):
        pos = text.find("\n", pos) + 1
        if pos == 0:
            return None
    body = text[pos:].rstrip("\n")
    if not body or "\n\n" in body or sep in ("\n", " ") or (sep != "\t" and "\t" in body):
        return None
    return _tokens(body, sep, n_cols)


def _body_lines(text: str, start: int) -> tuple[list[str], np.ndarray | None]:
    """Non-empty lines from index ``start`` on, plus their 1-based line numbers when blank lines were dropped."""
    lines = text.split("\n")[start:]
    while lines and not lines[-1].strip():
        lines.pop()
    if all(line.strip() for line in lines):
        return lines, None
    keep = [i for i, l in enumerate(lines) if l.strip()]
    return [lines[i] for i in keep], np.asarray(keep, dtype=np.int64) + start + 1


def _find_column(names: list[str], candidates: tuple[str, ...]) -> int | None:
    """Index in ``names`` of the first of ``candidates`` there (any case, blanks around a name dropped), or None."""
    low = [n.strip().lower() for n in names]
    for c in candidates:
        if c.lower() in low:
            return low.index(c.lower())
    return None


def check_columns(columns: dict | None) -> dict | None:
    """``columns`` (role -> header column name, roles of :data:`COLUMN_ROLES`) checked; ``ValueError`` naming an
    unknown role, an empty name or one column given two roles. None or ``{}``: None (the usual names)."""
    if not columns:
        return None
    unknown = sorted(set(columns) - set(COLUMN_ROLES))
    if unknown:
        raise ValueError(f"columns: unknown role(s) {unknown}; the roles are {list(COLUMN_ROLES)}")
    empty = [role for role, name in columns.items()
             if not (name is None and role == "time") and (not isinstance(name, str) or not name.strip())]
    if empty:
        raise ValueError(f"columns: an empty column name for {empty}"
                         + (" (only the time role may be None: no time column)" if None in columns.values() else ""))
    names = [name.strip() for name in columns.values() if name is not None]
    if len(set(names)) != len(names):
        raise ValueError(f"columns: one header column given two roles ({columns})")
    return {role: None if columns[role] is None else columns[role].strip() for role in COLUMN_ROLES if role in columns}


def _column_indices(names: list[str], columns: dict | None, raw: list[str] | None = None) -> list[int | None]:
    """Header indices of the user, item and time columns: each named in ``columns`` (exact name; as ``names`` or as
    ``raw``, the header's own spelling, give it) or found by its usual names (:data:`COLUMN_ROLES`, any case)."""
    columns = columns or {}
    stripped = [n.strip() for n in names]
    spelled = stripped if raw is None else [n.strip() for n in raw]

    def named(name):
        return stripped.index(name) if name in stripped else spelled.index(name) if name in spelled else None

    return [(None if columns[role] is None else named(columns[role])) if role in columns
            else _find_column(names, usual) for role, usual in COLUMN_ROLES.items()]


def _role_columns(path: str, names: list[str], shown: list[str], columns: dict | None,
                  what: str = "header") -> list[int | None]:
    """Indices of the user, item and time columns among ``names`` (:func:`_column_indices`); ``ValueError`` naming
    a ``columns`` name not among them, a missing user or item column, or one column found for two roles (``shown``:
    the names as the file spells them, for the message)."""
    ucol, icol, tcol = _column_indices(names, columns, shown)
    named = [f"{role} column {columns[role]!r}" for role, c in zip(COLUMN_ROLES, (ucol, icol, tcol))
             if c is None and (columns or {}).get(role) is not None]
    if named:
        raise ValueError(f"{path}: no {' or '.join(named)} in the {what} {names!r} (columns= names {what} columns "
                         "exactly)")
    missing = [role for role, c in (("user", ucol), ("item", icol)) if c is None]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} column in the {what} {shown!r} (expected one of "
                         f"user: {USER_COLUMNS}, item: {ITEM_COLUMNS}, optional timestamp: {TIME_COLUMNS}; or name "
                         "them: columns= / --columns user=NAME item=NAME [time=NAME])")
    if len({ucol, icol, tcol} - {None}) != sum(c is not None for c in (ucol, icol, tcol)):
        time = "" if tcol is None else f", time {names[tcol]!r}"
        raise ValueError(f"{path}: one {what} column found for two roles (user {names[ucol]!r}, item "
                         f"{names[icol]!r}{time}); name them with columns=")
    if tcol is None and "time" not in (columns or {}):
        _note_no_time_column(path, [n for c, n in enumerate(shown) if c not in (ucol, icol) and n.strip()
                                     and not n.startswith("__index_level_")])       # pandas' index in Parquet
    return [ucol, icol, tcol]


def _note_no_time_column(path: str, unused: list[str]) -> None:
    """Warn (one ``UserWarning``, which the commands show on stderr) that a header with columns left ``unused``
    (names as the file spells them) has no time column found by its usual names: the file's row order is then
    taken as the time order, which is wrong for a file not written in time order (a shuffled export). Silent when
    every column was used, or when ``columns`` said ``time=None`` (no time column, knowingly).

    Other names (``created_at``, ``event_time``, ``date``) are not taken for the time column by a guess: such a
    column may hold text dates or milliseconds, which would turn a run that works on the row order into an error,
    and more than one may be there; naming it (``--columns time=NAME``) is one word."""
    if unused:
        warnings.warn(f"{path}: no time column among {unused}: the file's row order is taken as the time order; "
                      "name one with --columns time=NAME (columns={'time': NAME}), or say there is none with "
                      "--columns time=none", UserWarning, stacklevel=5)


def _header_sep(header: str) -> str | None:
    for sep in ("\t", ",", ";"):
        if sep in header:
            return sep
    return None


def _split_header(header: str, sep: str | None) -> list[str]:
    """The fields of a header line: split at ``sep`` (whitespace when None); quoted names (``"user_id","item_id"``,
    as R's ``write.csv`` and pandas with ``QUOTE_ALL`` write them) lose their quotes."""
    if sep is not None and '"' in header:
        import csv
        return next(csv.reader([header], delimiter=sep))
    return header.split(sep) if sep else header.split()


# --------------------------------------------------------------------------- formats
def _read_table(text: str, path: str, typed_header: bool, skip: int = 0, columns: dict | None = None) -> Interactions:
    """Atomic ``.inter`` (typed header) and plain delimited files with a header (``skip``: blank lines the caller
    removed before the header, added to every line number a message gives; ``columns``: see
    :func:`read_interactions`)."""
    first_nl = text.find("\n")
    header = text if first_nl < 0 else text[:first_nl]
    if not header.strip():
        raise ValueError(f"{path}: empty file or empty header line")
    sep = _header_sep(header)
    names_raw = _split_header(header, sep)
    # a RecBole type ('timestamp:float') is not part of a column's name, in a header that types only some columns too
    # (else that column would not be found by its name: the timestamps lost silently)
    names = [n.split(":", 1)[0].strip() if typed_header or _TYPED_FIELD_ANY_CASE.match(n.strip()) else n.strip()
             for n in names_raw]
    ucol, icol, tcol = _role_columns(path, names, names_raw, columns)
    first = 2 + skip

    def read(col, line_numbers, quoted=None):
        # every column read before any error is raised: the file's first bad line is named, whatever its column
        parts = [lambda: _ids(col(ucol), _where(path, names[ucol], first, line_numbers), text.isascii(),
                              quoted=quoted and quoted(ucol)),
                 lambda: _ids(col(icol), _where(path, names[icol], first, line_numbers), text.isascii(),
                              quoted=quoted and quoted(icol)),
                 lambda: None if tcol is None else _timestamps(col(tcol), path, names[tcol], first_line=first,
                                                               line_numbers=line_numbers)]
        values, errors = [], []
        for part in parts:
            try:
                values.append(part())
            except ValueError as e:
                values.append(None)
                errors.append(e)
        if errors:
            raise min(errors, key=_first_line_named)
        return Interactions(*values, source=path)

    tokens = None if sep is None or '"' in text else _fast_tokens(text, 1, sep, len(names))
    if tokens is not None:
        n_cols = len(names)
        try:
            return read(lambda c: tokens[c::n_cols], None)
        except ValueError:
            # a line of blanks and separators only ('\t') fits the fast path's field count and then fails as an empty
            # id; it is a blank line, which the line-aware path skips like an empty one
            if all(line.strip() for line in text.split("\n")[1:] if line):
                raise
    return read(*_slow_columns(text, path, sep, names, skip))


def _slow_columns(text: str, path: str, sep: str | None, names: list[str], skip: int = 0):
    """Line-aware parsing (blank lines, quoted CSV, whitespace separators, error messages): ``(col, line_numbers,
    quoted)``, ``col(c)`` the tokens of column ``c`` (quoted fields without their quotes), ``line_numbers`` as
    :func:`_body_lines` gives them, ``quoted(c)(i)`` whether row ``i``'s field ``c`` was quoted (``None`` when the
    file has no quotes)."""
    lines, line_numbers = _body_lines(text, 1)
    if line_numbers is not None:
        line_numbers = line_numbers + skip
    if not lines:
        raise ValueError(f"{path}: no interactions after the header")

    def line_no(i: int) -> int:
        return int(line_numbers[i]) if line_numbers is not None else i + 2 + skip

    if sep is not None and '"' in text:  # quoted fields (any separator): let the csv module handle quotes
        import csv
        try:
            rows = list(csv.reader(lines, delimiter=sep, strict=True))
        except csv.Error:
            rows = None
        if rows is None or len(rows) != len(lines):   # a quote left open reads on into the next lines: find it
            for i, line in enumerate(lines):
                try:
                    next(csv.reader([line], delimiter=sep, strict=True))
                except csv.Error as e:
                    problem = ("a quoted field is not closed on its line (an unbalanced '\"')"
                               if "end of data" in str(e) else "text after a quoted field's closing quote")
                    raise ValueError(f"{path}, line {line_no(i)}: {problem}: {line[:80]!r}; a field that starts with "
                                     "'\"' is quoted whole, on one line ('\"\"' for a quote inside)") from None
            raise ValueError(f"{path}: the quoted fields could not be read")   # pragma: no cover
        for i, r in enumerate(rows):
            if len(r) != len(names):
                raise ValueError(f"{path}, line {line_no(i)}: expected {len(names)} fields, found {len(r)}")
        cols = [list(c) for c in zip(*rows, strict=True)]

        def field_quoted(i: int, c: int) -> bool:
            # strict csv: a field that starts with '"' is '"' + the value with '""' for '"' + '"', then the separator
            # (text after the closing quote is refused above), so the fields before c give field c's start
            line, pos = lines[i], 0
            for v in rows[i][:c]:
                pos += (len(v) + v.count('"') + 2 if line.startswith('"', pos) else len(v)) + len(sep)
            return line.startswith('"', pos)

        return cols.__getitem__, line_numbers, lambda c: lambda i: field_quoted(i, c)
    tokens = _split_rows(lines, sep, len(names), path, 2 + skip, line_numbers)
    n_cols = len(names)

    def col(c):
        return tokens[c::n_cols]
    return col, line_numbers, None


def _read_parquet(path: str, columns: dict | None = None) -> Interactions:
    """A Parquet table (pandas / polars / Spark / 🤗 datasets exports): columns found by name as in delimited files
    (``columns``: see :func:`read_interactions`), only those read. Ids: integer columns stay int64, string columns
    str (blanks around an id dropped; two ids that differ only in those blanks are refused); timestamps: numbers
    (seconds), or Arrow timestamps / dates (seconds since the epoch). A null, an empty id, a NUL character in an id,
    a NaN or infinite timestamp, or a column of another type is an error naming the column and row (integer
    timestamps beyond 2**53 are warned, as in text files); a float32 / float16 timestamp column reaching beyond
    2**24 / 2**11 s (already rounded: float32 keeps Unix seconds to 128-s steps) is refused naming the column and
    its dtype."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install 'ssm-rec-zoo[parquet]')") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    names = list(pf.schema_arrow.names)
    cols = _role_columns(path, names, names, columns, what="schema")
    try:
        table = pf.read(columns=[names[c] for c in cols if c is not None])
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: could not read columns of the Parquet file ({e})") from None

    def column(c):
        arr = table.column(names[c]).combine_chunks()
        if pa.types.is_dictionary(arr.type):                 # categorical ids: their values
            arr = arr.dictionary_decode()
        if arr.null_count:
            row = arr.is_null().to_numpy(zero_copy_only=False).argmax()
            raise ValueError(f"{path}, row {row + 1}, column {names[c]!r}: null value")
        return arr

    def ids(c) -> np.ndarray:
        arr = column(c)
        if pa.types.is_integer(arr.type):
            values = arr.to_numpy()
            # compared in uint64: numpy 1.x compares uint64 with a Python int in float64, where 2**63 == 2**63 - 1
            if values.dtype == np.uint64 and len(values) and values.max() > np.uint64(np.iinfo(np.int64).max):
                raise ValueError(f"{path}: column {names[c]!r} holds ids above 2**63 - 1; store them as strings")
            return values.astype(np.int64)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            import pyarrow.compute as pc

            nul = pc.match_substring(arr, "\x00")       # numpy's str arrays drop trailing NULs: 'a\x00' would be 'a'
            if pc.any(nul).as_py():
                row = nul.to_numpy(zero_copy_only=False).argmax()
                raise ValueError(f"{path}, row {row + 1}, column {names[c]!r}: a NUL character (\\x00) in an id")
            return _ids(arr.to_pylist(), _Where(path, names[c], 1, unit="row"), quotable=False)
        raise ValueError(f"{path}: column {names[c]!r} holds {arr.type}; ids must be integers or strings")

    user, item = ids(cols[0]), ids(cols[1])
    ts = None
    if cols[2] is not None:
        arr = column(cols[2])
        if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
            unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[arr.type.unit] if pa.types.is_timestamp(arr.type) else (
                1 / 86400 if pa.types.is_date32(arr.type) else 1e3)          # date32: days, date64: ms
            ts = arr.cast(pa.int64() if pa.types.is_timestamp(arr.type) or pa.types.is_date64(arr.type)
                          else pa.int32()).to_numpy().astype(np.float64) / unit
        elif (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and len(arr) \
                and _ISO_TIME.fullmatch(arr[0].as_py().strip()):           # ISO 8601 date-times with offsets
            ts = _iso_seconds(arr.to_pylist(), _Where(path, names[cols[2]], 1, unit="row"))
        elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            raw = arr.to_numpy()            # in its own dtype: a float32 column's rounding is refused before widening
            ts = _time_seconds(raw, f"{path}: the timestamps (column {names[cols[2]]!r})",
                               lambda i: f"{path}, row {i + 1}, column {names[cols[2]]!r}: timestamp {raw[i]}")
        else:
            raise ValueError(f"{path}: column {names[cols[2]]!r} holds {arr.type}; timestamps must be numbers "
                             "(seconds) or a timestamp / date type (convert it, e.g. pandas pd.to_datetime(df[col], "
                             "utc=True)); a model that does not read time can ignore it: --columns time=none "
                             "(columns={'time': None})")
        bad = np.flatnonzero(~np.isfinite(ts))
        if len(bad):
            raise ValueError(f"{path}, row {bad[0] + 1}, column {names[cols[2]]!r}: timestamp "
                             f"{float(ts[bad[0]])!r} is not a finite number")
    return Interactions(user, item, ts, source=path)


def _is_parquet(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == PARQUET_MAGIC


def _read_movielens(text: str, path: str) -> Interactions:
    """MovieLens ``user::item::rating::timestamp`` (no header). Ids as in :func:`_ids` (no quoting: two string ids
    that differ only in blanks around them are refused)."""
    tokens, line_numbers = _fast_tokens(text, 0, "::", 4), None
    if tokens is None:
        lines, line_numbers = _body_lines(text, 0)
        if not lines:
            raise ValueError(f"{path}: empty file")
        tokens = _split_rows(lines, "::", 4, path, 1, line_numbers)
    user = _ids(tokens[0::4], _where(path, "user (1st field)", 1, line_numbers), text.isascii(), quotable=False)
    item = _ids(tokens[1::4], _where(path, "item (2nd field)", 1, line_numbers), text.isascii(), quotable=False)
    ts = _timestamps(tokens[3::4], path, "timestamp (4th field)", first_line=1, line_numbers=line_numbers)
    return Interactions(user, item, ts, source=path)


def _read_seq(text: str, path: str, skip: int = 0) -> Interactions:
    """``user<TAB>item item ...`` per line after a header; rows come out user by user, items in order.

    The header is required (its first field names the user column, e.g. ``user_id``): without it the first user's
    line would be taken for the header and lost, so a first line that is not such a header is refused. Items must be
    space separated (a comma is refused), each user has one non-empty line (a repeated user or a user without items
    is refused, naming the lines; a user id loses the blanks around it, so `` u1`` and ``u1`` are one user listed
    twice, refused naming both spellings). ``skip``: blank lines the caller removed before the header (added to
    every line number a message gives).
    """
    header = text.split("\n", 1)[0]
    first = (header.split("\t", 1) if "\t" in header else header.split(None, 1) or [""])[0]
    if _find_column([first.split(":", 1)[0]], USER_COLUMNS) is None:
        raise ValueError(f"{path}, line {1 + skip}: expected the header 'user_id<TAB>item_ids_chronological' (first "
                         f"field one of {USER_COLUMNS}), got {header[:80]!r}; a .seq file without its header line "
                         f"would lose its first user, so add the header")
    lines, line_numbers = _body_lines(text, 1)
    if not lines:
        raise ValueError(f"{path}: no sequences after the header")

    def line_no(i: int) -> int:
        return (int(line_numbers[i]) if line_numbers is not None else i + 2) + skip

    users, items, seen = [], [], {}
    for i, line in enumerate(lines):
        parts = line.split("\t", 1)
        if len(parts) != 2:
            parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError(f"{path}, line {line_no(i)}: expected 'user<TAB>item item ...', got {line[:80]!r}")
        user, its = parts[0].strip(), parts[1].strip()
        if not its:
            raise ValueError(f"{path}, line {line_no(i)}: user {user!r} has no items")
        if "," in its:
            raise ValueError(f"{path}, line {line_no(i)}: items must be space separated, found a comma in {its[:80]!r}")
        if user in seen:
            first = (lines[seen[user]].split("\t", 1) if "\t" in lines[seen[user]] else [user])[0]
            if first != parts[0]:       # ' u1' and 'u1': two users to the file's writer, perhaps
                raise ValueError(f"{path}: user {user!r} is listed twice, as {first!r} (line {line_no(seen[user])}) "
                                 f"and {parts[0]!r} (line {line_no(i)}): blanks around an id are dropped, and a .seq "
                                 "file has one line per user (and no quoting): remove the blanks, or make those ids "
                                 "differ otherwise")
            raise ValueError(f"{path}: user {user!r} is listed twice (lines {line_no(seen[user])} and {line_no(i)}); "
                             f"a .seq file has one line per user")
        seen[user] = i
        users.append(user)
        items.append(its)
    # one C-level split for all items; per-line counts from the single-space count when single spaces are all the
    # whitespace between items (a total check alone let a line's extra space cancel another's tab: items moved to
    # the wrong user), else each line split
    joined = " ".join(items)
    flat = joined.split()
    if re.search(r"\s\s|[^\S ]", joined):                      # several spaces, tabs or other whitespace somewhere
        counts = np.fromiter((len(s.split()) for s in items), dtype=np.int64, count=len(items))
    else:
        counts = np.fromiter((s.count(" ") + 1 for s in items), dtype=np.int64, count=len(items))
    user = np.repeat(_ids(users, ascii=text.isascii()), counts)
    return Interactions(user, _ids(flat, ascii=text.isascii()), None, source=path)


# --------------------------------------------------------------------------- dispatch
def detect_format(path: str, header: str, columns: dict | None = None) -> str:
    """Format of a file from its (decompressed) first line and its name; ``ValueError`` when unrecognised. With
    ``columns`` (header column names, see :func:`read_interactions`) the file has a header: atomic or delimited."""
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    h = header.strip()
    fields = _split_header(h, _header_sep(h)) if '"' in h else re.split(r"[\t,;]", h) if re.search(r"[\t,;]", h) \
        else h.split()
    low = [f.strip().lower() for f in fields]
    if name.endswith(".seq") or (len(low) == 2 and low[1].startswith("item_ids")):
        return "seq"
    if "::" in h and re.match(r"^[^:]+::[^:]+::", h):
        return "movielens"
    if columns:
        return "atomic" if _typed_header(fields) else "delimited"
    if _typed_header(fields):
        return "atomic"
    names = [f.split(":", 1)[0] if _TYPED_FIELD_ANY_CASE.match(f.strip()) else f for f in fields]   # half-typed
    if _find_column(names, USER_COLUMNS) is not None and _find_column(names, ITEM_COLUMNS) is not None:
        return "delimited"
    raise ValueError(f"{path}: unknown interaction file format (first line {h[:80]!r}). Supported: RecBole atomic "
                     f".inter (typed header 'user_id:token ...'), MovieLens ratings.dat ('u::i::r::t'), TSV/CSV with a "
                     f"user_id/item_id[/timestamp] header (other names: columns= / --columns user=NAME item=NAME "
                     f"[time=NAME]), .seq files ('user_id<TAB>item_ids_chronological') and Parquet tables; or pass "
                     f"format= one of {FORMATS}")


_TYPED_FIELD = re.compile(r"^[^:]+:[a-z_]+$")      # a RecBole atomic header field: name:type
_TYPED_FIELD_ANY_CASE = re.compile(_TYPED_FIELD.pattern, re.IGNORECASE)


def _typed_header(fields: list[str]) -> bool:
    """A RecBole atomic header: every field ``name:type``."""
    return any(":" in f for f in fields) and all(_TYPED_FIELD.match(f.strip()) for f in fields if f.strip())


def read_interactions(path: str | os.PathLike, format: str = "auto", columns: dict | None = None) -> Interactions:
    """Read an interaction file into :class:`Interactions` (rows in file order).

    Args:
        path: file path; gzip-compressed files are detected and decompressed transparently.
        format: ``"auto"`` (Parquet by its magic bytes, else from the header / file name) or one of ``"atomic"``,
            ``"movielens"``, ``"delimited"``, ``"seq"``, ``"parquet"``.
        columns: header column names by role, for files with a header (delimited, atomic) whose columns are not
            called by the usual names: ``{"user": "customer", "item": "product", "time": "when"}`` (each role
            optional; a named column must be in the header, exactly); ``"time": None`` reads no time column even
            when one has a usual name (a column of text dates, for a model that does not read time). A header
            with other columns and no time column found warns once, naming them: the row order is then the time
            order.
    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown format, missing user/item column (or a ``columns`` name not in the header, ``columns``
            for a format without a header), malformed line (wrong number of fields, empty id;
            ``seq``: no header, repeated user, user without items, comma-separated items; an unbalanced quote; two
            spellings of an id that are one once the blanks around unquoted ids are dropped, naming both),
            non-numeric or NaN timestamp (the message names the file, line and column); a byte that is not UTF-8
            (but in a latin-1 MovieLens file) or a NUL byte (naming the line); a corrupt gzip file, another
            compression (bzip2, zstd, xz, zip), a file named ``.gz`` or ``.parquet`` that is neither that nor text.
    """
    path = os.fspath(path)
    if format not in ("auto",) + FORMATS:
        raise ValueError(f"unknown format {format!r}; choose 'auto' or one of {FORMATS}")
    columns = check_columns(columns)
    if format == "parquet" or (format == "auto" and _is_parquet(path)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"interaction file not found: {path}")
        inter = _read_parquet(path, columns)
        inter.format = "parquet"
        return inter
    text, not_utf8 = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: empty file")
    if "\x00" in text:                            # numpy's str arrays drop trailing NULs: 'a\x00' would become 'a'
        raise ValueError(f"{path}, line {text.count(chr(10), 0, text.index(chr(0))) + 1}: a NUL byte (\\x00); "
                         "interaction files are UTF-8 text (is it UTF-16, or binary?)")
    # blank (or whitespace-only) lines before the first line: the header formats start after them, and every line
    # number a message gives counts them (MovieLens files have no header and skip blank lines like any other)
    blank = re.match(r"(?:[^\S\n]*\n)*", text).end()
    lead, text_from = text.count("\n", 0, blank), blank
    header = text[text_from:].split("\n", 1)[0]
    if not_utf8 is not None:                      # refused unless MovieLens latin-1, before a format is guessed
        try:
            fmt = detect_format(path, header, columns) if format == "auto" else format
        except ValueError:
            fmt = None
        _check_encoding(path, text, fmt, not_utf8)
    fmt = detect_format(path, header, columns) if format == "auto" else format
    if columns and fmt in ("seq", "movielens"):
        raise ValueError(f"{path}: columns= names header columns, but a {fmt} file's columns are fixed")
    if fmt == "seq":
        inter = _read_seq(text[text_from:], path, skip=lead)
    elif fmt == "movielens":
        inter = _read_movielens(text, path)
    else:
        inter = _read_table(text[text_from:], path, typed_header=(fmt == "atomic"), skip=lead, columns=columns)
    inter.format = fmt
    return inter


__all__ = ["Interactions", "read_interactions", "detect_format", "check_columns", "FORMATS", "COLUMN_ROLES"]
