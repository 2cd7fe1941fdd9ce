"""One uploaded dump → a typed, validated parquet table plus a quarantine of its bad rows.

The back office sends CSV (utf-8 or cp1251, "," or ";", decimal commas), XLSX or parquet. All
of them are reduced to the same thing — text columns with a line number — and checked by SQL
generated from `schema`, so DuckDB does the work and no Python code loops over the rows of a
CSV or parquet file (cp1251 is transcoded in chunks; XLSX is streamed by openpyxl).

A clean file — the common case — is read once: the CSV reader parses numbers, dates and
quarters itself, every check runs in the same SQL, and the first problem of any kind abandons
the pass. Only then are the rows explained, in further passes: one finds duplicate keys, one
runs every check on every row and keeps the bad rows with their reasons, one converts the
other rows to parquet.

A file that is not the contract at all (unknown table, missing columns, binary, empty) raises
`DumpRejected`; a file that is the contract but has bad rows is accepted, and every bad row goes
to a rejects CSV with its line number in the source file and a readable Russian reason, so the
back office can find and fix it.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import re
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from npf_loyalty import schema
from npf_loyalty.engine import PARQUET_WRITE_OPTIONS, QUARTER_TYPE, create_quarter_type

SNIFF_BYTES = 4 << 20  # enough lines to see the encoding and the decimal separator
CHUNK_BYTES = 4 << 20  # streamed transcoding: memory stays flat whatever the file size
BOM = "\ufeff"
DATE_MIN, DATE_MAX = "1900-01-01", "2100-12-31"  # "31.01.20" parses as year 20: not a real date
SPACES = (" ", "\u00a0", "\u202f", "\u2009")  # thousands separators seen in Russian exports
SHAPE_REASON = "неверное число полей"
DOTTED_DATES = "['%d.%m.%Y', '%d.%m.%Y %H:%M:%S', '%d.%m.%Y %H:%M']"
# A delimiter no text file contains: reading with it yields one column per physical line.
LINE_DELIM = "\x1f\x1e\x1d"

_CSV_ERRORS = {  # DuckDB's reader error types → what the back office should look at
    "MISSING COLUMNS": SHAPE_REASON,
    "TOO MANY COLUMNS": SHAPE_REASON,
    "UNQUOTED VALUE": "нарушены кавычки",
    "INVALID UNICODE": "недопустимые байты (не UTF-8)",
    "INVALID ENCODING": "недопустимые байты (не UTF-8)",
    "LINE SIZE OVER MAXIMUM": "слишком длинная строка",
}


class DumpRejected(Exception):  # noqa: N818 (the name is the interface)
    """The file is not the contract at all (unknown table, wrong/missing columns, binary, empty)."""

    def __init__(self, reason: str, details: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = list(details or [])

    def report(self) -> str:
        """What the back office reads: the reason, then one line per detail."""
        lines = [f"Файл не принят: {self.reason}"]
        lines += [f"  – {d}" for d in self.details]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


@dataclass(frozen=True)
class Dialect:
    format: Literal["csv", "xlsx", "parquet"]
    encoding: str  # "utf-8" or "cp1251" ("utf-8" for non-CSV)
    separator: str  # "," or ";" ("" for non-CSV)
    decimal_comma: bool

    @property
    def comma_is_decimal(self) -> bool:
        """A comma inside a number is a decimal point unless it separates the fields.

        In a ";" file a comma can mean nothing else, even where the sample did not show one.
        """
        return self.decimal_comma or self.separator != ","


@dataclass(frozen=True)
class ValidatedTable:
    table: schema.Table
    dialect: Dialect
    clean_path: Path
    rows_total: int
    rows_clean: int
    rows_rejected: int
    rejects_path: Path | None
    reasons: dict[str, int]
    ignored_columns: tuple[str, ...] = field(default=())
    single_pass: bool = False  # clean, so read once (see _strict_pass)


def validated_summary(v: ValidatedTable) -> dict[str, Any]:
    """A JSON-able account of one read, stored next to the quarantine."""
    return {
        "table": v.table.name,
        "dialect": asdict(v.dialect),
        "rows_total": v.rows_total,
        "rows_clean": v.rows_clean,
        "rows_rejected": v.rows_rejected,
        "reasons": dict(v.reasons),
        "ignored_columns": list(v.ignored_columns),
        "single_pass": v.single_pass,
        "clean_file": v.clean_path.name,
        "rejects_file": v.rejects_path.name if v.rejects_path else None,
    }


# --- which table ---------------------------------------------------------------------------


def _normalise(name: str) -> str:
    return name.replace(BOM, "").strip().strip('"').strip().lower()


def detect_table(columns: Sequence[str], name_hint: str = "") -> schema.Table:
    """The contract table whose required columns the header has; the file name only breaks ties.

    The header decides because back-office file names are arbitrary ("выгрузка (3).csv").
    """
    present = {_normalise(c) for c in columns} - {""}
    hint = name_hint.lower()
    tables = list(schema.TABLES.values())
    complete = [t for t in tables if set(t.required_names) <= present]
    if complete:
        # a header complete for two tables: the hinted one, else the one explaining more columns
        complete.sort(key=lambda t: (t.name not in hint, len(present - set(t.names))))
        return complete[0]

    def overlap(t: schema.Table) -> float:
        return len(present & set(t.required_names)) / len(t.required_names)

    hinted = [t for t in tables if t.name in hint]
    best = hinted[0] if hinted else max(tables, key=overlap)
    if hinted or overlap(best) >= 0.5:
        missing = [c for c in best.required_names if c not in present]
        unexpected = sorted(present - set(best.names))
        details = [f"нет столбцов: {', '.join(missing)}"]
        if unexpected:
            details.append(f"лишние столбцы: {', '.join(unexpected)}")
        raise DumpRejected(f"в заголовке нет обязательных столбцов таблицы {best.name}", details)
    shown = ", ".join(_normalise(c) for c in columns[:20]) + (" …" if len(columns) > 20 else "")
    raise DumpRejected(
        "неизвестная таблица: заголовок не совпадает ни с одной таблицей контракта",
        [f"столбцы файла: {shown or '(нет)'}", f"ожидаются таблицы: {', '.join(schema.TABLES)}"],
    )


# --- which dialect -------------------------------------------------------------------------


def sniff(path: Path) -> Dialect:
    """Format by magic bytes; for CSV the encoding, separator and decimal comma from the head.

    Only the first few MB are read, so sniffing a 2 GB file costs nothing.
    """
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    whole = len(head) < SNIFF_BYTES
    if not head.replace(BOM.encode(), b"").strip():
        raise DumpRejected("файл пуст")
    if head.startswith(b"PK\x03\x04"):
        return Dialect("xlsx", "utf-8", "", False)
    if head.startswith(b"PAR1"):
        return Dialect("parquet", "utf-8", "", False)
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise DumpRejected(
            "формат XLS (Excel 97–2003) не поддерживается", ["сохраните файл как XLSX или CSV"]
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DumpRejected("файл в кодировке UTF-16", ["сохраните файл как CSV в UTF-8 или CP1251"])
    if b"\x00" in head:
        raise DumpRejected("двоичный файл, а не текст", ["в файле есть нулевые байты"])

    encoding, text = _decode_head(head, whole)
    controls = len(_CONTROL.findall(text))
    if controls > max(2, len(text) // 1000):
        raise DumpRejected("двоичный файл, а не текст", [f"управляющих символов: {controls}"])
    lines = text.removeprefix(BOM).splitlines()
    header = lines[0] if lines else ""
    separator = ";" if header.count(";") > header.count(",") else ","
    return Dialect("csv", encoding, separator, _has_decimal_comma(lines[1:], separator))


def _decode_head(head: bytes, whole: bool) -> tuple[str, str]:
    """utf-8 if the head decodes as utf-8 (a character cut at the end is fine), else cp1251."""
    try:
        return "utf-8", codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError:
        pass
    try:
        return "cp1251", head.decode("cp1251")
    except UnicodeDecodeError as error:
        raise DumpRejected(
            "не удаётся прочитать текст: ни UTF-8, ни CP1251",
            [f"недопустимый байт 0x{head[error.start]:02x} в позиции {error.start}"],
        ) from None


_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DECIMAL_COMMA = re.compile(r'(?:^|;)\s*"?[-+]?\d[\d \u00a0]*,\d+"?\s*(?=;|$)')


def _has_decimal_comma(lines: Sequence[str], separator: str) -> bool:
    if separator != ";":
        return False
    return any(_DECIMAL_COMMA.search(line) for line in lines[:20_000])


# --- reading -------------------------------------------------------------------------------


@dataclass
class _Source:
    """A dump reduced to text columns c0…cN with a line number: what validation consumes."""

    names: list[str]  # header as in the file (BOM and outer spaces removed)
    csv_path: Path | None = None  # plain CSV in utf-8 that DuckDB reads
    separator: str = ","
    line_column: bool = False  # first CSV column holds the line number (our own temp file)
    parquet_path: Path | None = None
    parquet_types: list[str] = field(default_factory=list)
    physical_lines: int | None = None  # known for free when we transcoded the file
    shape_rows: list[tuple[int, str, str]] = field(default_factory=list)  # xlsx rows too wide

    @property
    def user_csv(self) -> bool:
        """Line numbers must be reconstructed (DuckDB reports none for good rows)."""
        return self.csv_path is not None and not self.line_column

    def relation(self, *, ordinal: bool, rejects: tuple[str, str] | None = None) -> str:
        """SQL for (ord, c0…cN): ord is the line number, or the row ordinal of a user CSV."""
        cols = [f"c{i}" for i in range(len(self.names))]
        if self.parquet_path is not None:
            exprs = [
                f"CAST(CAST({_ident(n)} AS INTEGER) AS VARCHAR)"
                if t == "BOOLEAN"
                else f"CAST({_ident(n)} AS VARCHAR)"
                for n, t in zip(self.names, self.parquet_types, strict=True)
            ]
            select = ", ".join(f"{e} AS {c}" for e, c in zip(exprs, cols, strict=True))
            return (
                f"(SELECT file_row_number + 2 AS ord, {select} "
                f"FROM read_parquet({_lit(str(self.parquet_path))}, file_row_number = true))"
            )
        assert self.csv_path is not None
        spec = ([("ord", "BIGINT")] if self.line_column else []) + [(c, "VARCHAR") for c in cols]
        options = self._csv_options(spec)
        if not self.line_column:
            if rejects:
                table, scan = rejects
                options += ["store_rejects = true", f"rejects_table = '{table}'"]
                options += [f"rejects_scan = '{scan}'"]
            else:
                options.append("ignore_errors = true")
        scan = f"read_csv({_lit(str(self.csv_path))}, {', '.join(options)})"
        if self.line_column:
            return f"(SELECT ord, {', '.join(cols)} FROM {scan})"
        if ordinal:
            return f"(SELECT ordinality AS ord, {', '.join(cols)} FROM {scan} WITH ORDINALITY)"
        return f"(SELECT NULL::BIGINT AS ord, {', '.join(cols)} FROM {scan})"

    def _csv_options(self, spec: list[tuple[str, str]]) -> list[str]:
        """read_csv options shared by every read of the file: its dialect and (name, type)s."""
        columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in spec) + "}"
        return [
            f"delim = {_lit(self.separator)}",
            "quote = '\"'",
            "escape = '\"'",
            "header = true",
            f"columns = {columns}",
            "auto_detect = false",
        ]

    def strict_relation(self, types: dict[str, str], decimal_comma: bool) -> str:
        """SQL for c0…cN of a user CSV where any malformed row or unparseable typed value raises.

        ``types`` gives the DuckDB type of some c{i} (the others are text): the CSV reader's own
        parsers are several times faster than casting text in SQL.
        """
        assert self.user_csv and self.csv_path is not None
        spec = [(f"c{i}", types.get(f"c{i}", "VARCHAR")) for i in range(len(self.names))]
        options = [
            *self._csv_options(spec),
            f"decimal_separator = {_lit(',' if decimal_comma else '.')}",
            # without a format the reader takes a date from the start of the field and drops
            # the rest ("2020-01-05 garbage"); TRY_CAST in the explaining passes rejects it
            "dateformat = '%Y-%m-%d'",
        ]
        return f"(SELECT * FROM read_csv({_lit(str(self.csv_path))}, {', '.join(options)}))"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open_source(
    path: Path, dialect: Dialect, tmp: Path, con: duckdb.DuckDBPyConnection
) -> _Source:
    if dialect.format == "parquet":
        try:
            described = con.execute(
                f"DESCRIBE SELECT * FROM read_parquet({_lit(str(path))})"
            ).fetchall()
        except duckdb.Error as error:
            raise DumpRejected("файл parquet повреждён", [str(error).splitlines()[0]]) from None
        names = [str(row[0]) for row in described]
        types = [str(r[1]) for r in described]
        return _Source(names, parquet_path=path, parquet_types=types)
    if dialect.format == "xlsx":
        return _xlsx_to_csv(path, tmp)
    csv_path, lines = path, None
    if dialect.encoding != "utf-8":
        csv_path, lines = tmp, _transcode(path, tmp, dialect.encoding)
    with csv_path.open(encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter=dialect.separator), [])
    names = [h.replace(BOM, "").strip() for h in header]
    return _Source(names, csv_path=csv_path, separator=dialect.separator, physical_lines=lines)


def _transcode(src: Path, dst: Path, encoding: str) -> int:
    """Re-encode to utf-8 in chunks (DuckDB reads no cp1251); returns the line count on the way.

    cp1251 is a stateless single-byte code, so chunks decode independently, and a chunk of
    pure ASCII (most of a transactions dump) is already utf-8 and is copied as is.
    """
    newlines, tail, offset = 0, b"", 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK_BYTES):
            if b"\x00" in chunk:
                raise DumpRejected("двоичный файл, а не текст", ["в файле есть нулевые байты"])
            if chunk.isascii():
                fout.write(chunk)
            else:
                try:
                    fout.write(chunk.decode(encoding).encode("utf-8"))
                except UnicodeDecodeError as error:
                    raise DumpRejected(
                        f"не удаётся прочитать файл как {encoding.upper()}",
                        [
                            f"недопустимый байт 0x{chunk[error.start]:02x} "
                            f"в позиции {offset + error.start}"
                        ],
                    ) from None
            newlines += chunk.count(b"\n")
            tail = _tail(tail, chunk)
            offset += len(chunk)
    return _lines_from(newlines, tail)


def _tail(tail: bytes, chunk: bytes, keep: int = 65536) -> bytes:
    """The file's last bytes so far, without copying whole chunks."""
    return chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]


def _lines_from(newlines: int, tail: bytes) -> int:
    """Physical lines up to the last non-blank one (trailing empty lines are not rows)."""
    stripped = tail.rstrip(b"\r\n")
    return newlines - tail[len(stripped) :].count(b"\n") + 1


def _count_lines(path: Path) -> int:
    newlines, tail = 0, b""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            newlines += chunk.count(b"\n")
            tail = _tail(tail, chunk)
    return _lines_from(newlines, tail)


def _xlsx_to_csv(path: Path, out: Path) -> _Source:
    """First sheet → utf-8 CSV with the Excel row number as the first column.

    openpyxl's read-only mode streams the sheet, so memory stays flat; fully empty rows are
    skipped but keep their numbers, so the line numbers are the ones Excel shows.
    """
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises many kinds; all mean "not a readable workbook"
        raise DumpRejected("файл повреждён или это не XLSX", [str(error)]) from None
    shape: list[tuple[int, str, str]] = []
    names: list[str] | None = None
    try:
        sheet = book.worksheets[0]
        sheet.reset_dimensions()  # some writers store a wrong size; read what is there
        with out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            for line, row in enumerate(sheet.iter_rows(values_only=True), start=1):
                cells = [_cell_text(v) for v in row]
                while cells and not cells[-1]:
                    cells.pop()
                if not cells:
                    continue
                if names is None:
                    names = [c.replace(BOM, "").strip() for c in cells]
                    writer.writerow(["__line", *names])
                    continue
                if len(cells) > len(names):
                    found = f"{SHAPE_REASON}: ожидалось {len(names)}, найдено {len(cells)}"
                    shape.append((line, ";".join(cells), found))
                    continue
                writer.writerow([line, *cells, *[""] * (len(names) - len(cells))])
    finally:
        book.close()
    if names is None:
        raise DumpRejected("файл пуст", ["в первом листе нет ни одной заполненной строки"])
    return _Source(names, csv_path=out, line_column=True, shape_rows=shape)


def _cell_text(value: object) -> str:
    """An Excel cell as the text a CSV export would hold (dates ISO, integral floats without .0)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time():
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# --- validation SQL --------------------------------------------------------------------------


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class _Check:
    when: str  # SQL condition: the value has this problem
    kind: str | None  # counted in `reasons` (with the column name); None: fine, stop checking
    text: str  # SQL for the full reason shown in the rejects file


@dataclass
class _Col:
    """One contract column present in the file and the SQL that parses and checks it.

    The parse tries the form a clean export has first (one cast or one regex on the raw text)
    and only falls back to trimming, removing spaces or reading commas and dotted dates where
    that fails: on a 26M-row file the string clean-up of every value costs more than the rest.
    """

    col: schema.Column
    j: int  # position in the schema (names the helper columns)
    raw: str  # c{i}: the column's text in the file
    native: bool = False  # c{i} was typed by the CSV reader itself (see NATIVE_TYPES)

    @property
    def t(self) -> str:
        return f"t{self.j}"

    @property
    def k(self) -> str:
        return f"k{self.j}"

    @property
    def r(self) -> str:
        return f"r{self.j}"

    def parsed(self, comma_is_decimal: bool) -> str:
        """The typed value, NULL when empty or not parseable (INT kept as DOUBLE until output)."""
        return f"{self._parse_sql(comma_is_decimal)} AS {self.t}"

    def _parse_sql(self, comma_is_decimal: bool) -> str:
        c = self.raw
        if self.native:
            return c
        trimmed = f"trim({c})"
        match self.col.kind:
            case schema.Kind.INT | schema.Kind.FLOAT:
                cleaned = c
                for space in SPACES:
                    cleaned = f"replace({cleaned}, {_lit(space)}, '')"
                if comma_is_decimal:
                    cleaned = f"replace({cleaned}, ',', '.')"
                x = f"coalesce(TRY_CAST({c} AS DOUBLE), TRY_CAST({cleaned} AS DOUBLE))"
            case schema.Kind.ID:
                loose = f"regexp_full_match({trimmed}, '(0[xX])?[0-9a-fA-F]{{32}}')"
                x = (
                    f"CASE WHEN regexp_full_match({c}, '0x[0-9a-f]{{32}}') THEN {c} "
                    f"WHEN {loose} THEN '0x' || lower(right({trimmed}, 32)) END"
                )
            case schema.Kind.DATE:
                dotted = f"CAST(try_strptime({trimmed}, {DOTTED_DATES}) AS DATE)"
                x = (
                    f"coalesce(TRY_CAST({c} AS DATE), "
                    f"CASE WHEN {c} LIKE '%_._%._%' THEN {dotted} END)"
                )
            case schema.Kind.QUARTER:
                pattern = "'[0-9]{4}Q[1-4]'"
                x = (
                    f"CASE WHEN regexp_full_match({c}, {pattern}) THEN {c} "
                    f"WHEN regexp_full_match(upper({trimmed}), {pattern}) THEN upper({trimmed}) END"
                )
            case schema.Kind.POSTAL:
                x = (
                    f"CASE WHEN regexp_full_match({c}, '[0-9]{{6}}') THEN {c} "
                    f"WHEN regexp_full_match({trimmed}, '[0-9]{{6}}(\\.0+)?') "
                    f"THEN {trimmed}[1:6] END"
                )
            case _:
                x = f"nullif({trimmed}, '')"
        return x

    def converted(self, comma_is_decimal: bool) -> str:
        """The clean parquet's column from a value validation already accepted.

        Knowing the value is valid makes the regexes unnecessary: this is the cheap second
        pass. It must give the same result as `parsed` for every valid value.
        """
        c, trimmed = self.raw, f"trim({self.raw})"
        match self.col.kind:
            case schema.Kind.INT:
                x = f"CAST({self._parse_sql(comma_is_decimal)} AS BIGINT)"
            case schema.Kind.ID:
                x = (
                    f"CASE WHEN length({c}) = 34 AND starts_with({c}, '0x') THEN lower({c}) "
                    f"ELSE '0x' || lower(right(nullif({trimmed}, ''), 32)) END"
                )
            case schema.Kind.QUARTER:
                x = f"CASE WHEN {c} LIKE '____Q_' THEN {c} ELSE nullif(upper({trimmed}), '') END"
            case schema.Kind.POSTAL:
                x = f"nullif(left({trimmed}, 6), '')"
            case _:
                x = self._parse_sql(comma_is_decimal)
        return f"{x} AS {_ident(self.col.name)}"

    def checks(self, cross: list[_Check]) -> list[_Check]:
        """Problems in the order they are reported; the first that holds is the column's one."""
        c, t = self.col, self.t
        value = f"trim({self.raw})"
        quoted = f"'«' || {value} || '»'"
        empty = (
            f"{t} IS NULL"
            if self.native
            else f"{t} IS NULL AND ({self.raw} IS NULL OR {value} = '')"
        )
        kind = None if c.nullable else "пустое значение в обязательном поле"
        out = [_Check(empty, kind, _lit(kind or ""))]
        number = c.kind in (schema.Kind.INT, schema.Kind.FLOAT)
        bad_format = {
            schema.Kind.INT: "не число",
            schema.Kind.FLOAT: "не число",
            schema.Kind.ID: "неверный идентификатор",
            schema.Kind.DATE: "неверный формат даты",
            schema.Kind.QUARTER: "неверный квартал (ожидается вида 2017Q4)",
            schema.Kind.POSTAL: "почтовый индекс не из 6 цифр",
        }.get(c.kind)
        if bad_format:
            when = f"{t} IS NULL OR NOT isfinite({t})" if number else f"{t} IS NULL"
            out.append(_Check(when, bad_format, f"{_lit(bad_format + ': ')} || {quoted}"))
        if c.kind is schema.Kind.INT:
            kind = "не целое число"
            out.append(_Check(f"{t} <> trunc({t})", kind, f"{_lit(kind + ': ')} || {quoted}"))
            kind = "слишком большое число"
            out.append(_Check(f"abs({t}) > 1e15", kind, f"{_lit(kind + ': ')} || {value}"))
        if number and c.allowed is not None:
            allowed = ", ".join(str(a) for a in c.allowed)
            kind = f"недопустимое значение (допустимо: {allowed})"
            text = f"'недопустимое значение ' || {value} || {_lit(f' (допустимо: {allowed})')}"
            out.append(_Check(f"{t} NOT IN ({allowed})", kind, text))
        if number and (c.min is not None or c.max is not None):
            if c.min is not None and c.max is not None:
                kind, when = (
                    f"вне диапазона {_num(c.min)}–{_num(c.max)}",
                    (f"({t} < {c.min!r} OR {t} > {c.max!r})"),
                )
            elif c.min is not None:
                kind, when = f"меньше минимума {_num(c.min)}", f"{t} < {c.min!r}"
            else:
                assert c.max is not None
                kind, when = f"больше максимума {_num(c.max)}", f"{t} > {c.max!r}"
            out.append(_Check(when, kind, f"{_lit(kind + ': ')} || {value}"))
        if c.kind is schema.Kind.DATE:
            kind = "дата вне диапазона 1900–2100"
            when = f"({t} < DATE '{DATE_MIN}' OR {t} > DATE '{DATE_MAX}')"
            out.append(_Check(when, kind, f"{_lit(kind + ': ')} || {quoted}"))
        return out + cross


QUARTER_INDEX = "q_idx"  # year·10 + quarter, derived once per row for the cross-checks


def _cross_checks(
    table: schema.Table, by_name: dict[str, _Col]
) -> tuple[dict[str, list[_Check]], list[str]]:
    """Checks between columns (the year is the quarter's; an operation lies in its quarter)
    and the derived values they compare, computed once per row rather than once per check."""
    checks: dict[str, list[_Check]] = {}
    quarter = by_name.get("quarter")
    if quarter is None:
        return checks, []
    q, qi = quarter.t, QUARTER_INDEX
    if quarter.native:  # its position in schema.QUARTERS: 4 quarters a year from YEAR_MIN
        code = f"enum_code({q})"
        derived = [f"({schema.YEAR_MIN} + {code} // 4) * 10 + {code} % 4 + 1 AS {qi}"]
    else:
        derived = [f"CAST({q}[1:4] AS INTEGER) * 10 + CAST({q}[6] AS INTEGER) AS {qi}"]
    year = by_name.get("year")
    if year is not None and year.col.kind is schema.Kind.INT:
        kind = "год не совпадает с кварталом"
        text = f"'год ' || trim({year.raw}) || ' не совпадает с кварталом ' || {q}"
        checks.setdefault("year", []).append(_Check(f"{year.t} <> {qi} // 10", kind, text))
    date = by_name.get("npo_oprtn_date") if table.name == schema.TRANSACTIONS.name else None
    if date is not None:
        kind = "дата операции вне квартала"
        d = date.t
        text = f"'дата операции ' || strftime({d}, '%Y-%m-%d') || ' вне квартала ' || {q}"
        when = f"year({d}) * 10 + quarter({d}) <> {qi}"
        checks.setdefault(date.col.name, []).append(_Check(when, kind, text))
    return checks, derived


@dataclass
class _Plan:
    """The generated SQL for one table and one file layout."""

    cols: list[_Col]
    checks: dict[int, list[_Check]]  # by _Col.j
    derived: list[str]  # per-row values the cross-checks share
    comma_is_decimal: bool

    def parsed(self, relation: str) -> str:
        """(ord, c0…cN, t*): the typed values, and the derived ones the cross-checks share."""
        parsed = ", ".join(c.parsed(self.comma_is_decimal) for c in self.cols)
        inner = f"(SELECT *, {parsed} FROM {relation})"
        if self.derived:
            inner = f"(SELECT *, {', '.join(self.derived)} FROM {inner})"
        return inner

    def checked(self, relation: str) -> str:
        """(ord, c0…cN, t*, k*): typed values and the kind of each column's first problem."""
        kinds = ", ".join(
            _case([(ch.when, _lit(ch.kind) if ch.kind else "NULL") for ch in self.checks[c.j]], c.k)
            for c in self.cols
        )
        return f"(SELECT *, {kinds} FROM {self.parsed(relation)})"

    @property
    def valid(self) -> str:
        """SQL true when every column passes: the same checks as `checked`, as booleans."""
        columns = [
            "CASE "
            + " ".join(
                f"WHEN {ch.when} THEN {'FALSE' if ch.kind else 'TRUE'}" for ch in self.checks[c.j]
            )
            + " ELSE TRUE END"
            for c in self.cols
            if self.checks[c.j]
        ]
        return " AND ".join(f"({x})" for x in columns) or "TRUE"

    @property
    def ok(self) -> str:
        return " AND ".join(f"{c.k} IS NULL" for c in self.cols) or "TRUE"

    def reasons(self) -> str:
        return ", ".join(
            _case([(ch.when, ch.text if ch.kind else "NULL") for ch in self.checks[c.j]], c.r)
            for c in self.cols
        )

    def first_problem(self, dup_kind: str) -> str:
        parts = [f"{_lit(c.col.name + ': ')} || {c.k}" for c in self.cols]
        parts.append(f"CASE WHEN first_ord IS NOT NULL THEN {_lit(dup_kind)} END")
        return f"coalesce({', '.join(parts)})"


def _case(branches: list[tuple[str, str]], alias: str) -> str:
    whens = " ".join(f"WHEN {when} THEN {then}" for when, then in branches)
    return f"CAST(CASE {whens} END AS VARCHAR) AS {alias}" if whens else f"NULL::VARCHAR AS {alias}"


# --- the reader ------------------------------------------------------------------------------


def read_dump(
    path: Path, work_dir: Path, con: duckdb.DuckDBPyConnection, name_hint: str = ""
) -> ValidatedTable:
    """Validate one uploaded file; write `<table>.parquet` (+ `<table>.rejects.csv`) to work_dir."""
    work_dir.mkdir(parents=True, exist_ok=True)
    dialect = sniff(path)
    tag = uuid.uuid4().hex[:12]
    tmp = work_dir / f".{tag}.utf8.csv"
    parts = ("dups", "bad", "shape", "lines", "recs", "rej", "scan")
    names = {x: f"_readers_{tag}_{x}" for x in parts}
    disabled = _scalar_text(con, "SELECT current_setting('disabled_optimizers')")
    try:
        # Pushing `WHERE <all checks pass>` below the projections would inline every parse
        # into every check that reads it: 3–6× the work on a big file. Keep the layers.
        fence = ",".join(x for x in (disabled, "filter_pushdown") if x)
        con.execute(f"SET disabled_optimizers = {_lit(fence)}")
        source = _open_source(path, dialect, tmp, con)
        try:
            return _validate(source, dialect, work_dir, con, name_hint or path.name, names)
        except duckdb.InvalidInputException as error:
            if "CSV" not in str(error):
                raise
            # e.g. CRLF and LF line ends mixed in one file: DuckDB's parser gives up on it
            raise DumpRejected(
                "файл не разбирается как CSV",
                [
                    "проверьте, что все строки кончаются одинаково (CRLF или LF) "
                    "и что кавычки закрыты",
                    str(error).splitlines()[0],
                ],
            ) from None
    finally:
        con.execute(f"SET disabled_optimizers = {_lit(disabled)}")
        for name in names.values():
            with suppress(duckdb.Error):
                con.execute(f"DROP TABLE IF EXISTS {name}")
        tmp.unlink(missing_ok=True)


def _validate(
    source: _Source,
    dialect: Dialect,
    work_dir: Path,
    con: duckdb.DuckDBPyConnection,
    name_hint: str,
    names: dict[str, str],
) -> ValidatedTable:
    table = detect_table(source.names, name_hint)
    normalised = [_normalise(n) for n in source.names]
    repeated = sorted({n for n in normalised if n in table.names and normalised.count(n) > 1})
    if repeated:
        raise DumpRejected("столбцы повторяются в заголовке", [", ".join(repeated)])
    position = {n: f"c{i}" for i, n in enumerate(normalised)}
    ignored = tuple(
        source.names[i] or f"(без имени, столбец {i + 1})"
        for i, n in enumerate(normalised)
        if n not in table.names
    )
    clean_path = work_dir / f"{table.name}.parquet"
    rejects_path = work_dir / f"{table.name}.rejects.csv"
    rejects_path.unlink(missing_ok=True)
    written = _strict_pass(source, dialect, table, position, clean_path, con)
    if written:
        return ValidatedTable(
            table=table,
            dialect=dialect,
            clean_path=clean_path,
            rows_total=written,
            rows_clean=written,
            rows_rejected=0,
            rejects_path=None,
            reasons={},
            ignored_columns=ignored,
            single_pass=True,
        )
    plan = _make_plan(table, position, dialect.comma_is_decimal)
    cols = plan.cols
    by_name = {c.col.name: c for c in cols}
    key = [by_name[k] for k in table.key]

    # 1. duplicate keys, among rows whose key values are valid: later occurrences are rejected
    if key:
        keys = ", ".join(k.t for k in key)
        known = " AND ".join(f"{k.t} IS NOT NULL" for k in key)
        con.execute(
            f"CREATE TEMP TABLE {names['dups']} AS SELECT ord, first_ord FROM ("
            f"SELECT ord, min(ord) OVER (PARTITION BY {keys}) AS first_ord "
            f"FROM {plan.checked(source.relation(ordinal=True))} WHERE {known}) "
            "WHERE ord <> first_ord"
        )
    else:
        con.execute(f"CREATE TEMP TABLE {names['dups']} (ord BIGINT, first_ord BIGINT)")

    # 2. validation: every check on every row; only the bad rows are kept, with their reasons.
    #    This first scan of a user CSV also records the rows with a wrong number of fields.
    rejects = (names["rej"], names["scan"]) if source.user_csv else None
    dup_kind = f"дубликат ключа ({', '.join(table.key)})"
    raws = ", ".join(f"c{i}" for i in range(len(source.names)))
    con.execute(
        f"CREATE TEMP TABLE {names['bad']} AS SELECT ord, {raws}, "
        f"{', '.join(c.k for c in cols)}, {plan.reasons()}, first_ord, "
        f"{plan.first_problem(dup_kind)} AS first_problem "
        f"FROM {plan.checked(source.relation(ordinal=True, rejects=rejects))} "
        f"LEFT JOIN {names['dups']} USING (ord) "
        f"WHERE NOT ({plan.ok}) OR first_ord IS NOT NULL"
    )
    _collect_shape_rejects(con, source, names, rejects)
    n_bad = _scalar(con, f"SELECT count(*) FROM {names['bad']}")
    n_shape = _scalar(con, f"SELECT count(*) FROM {names['shape']}")

    # 3. the clean table: the other rows converted without re-checking. Meanwhile a thread
    #    counts the lines of a user CSV if bad rows need their line numbers.
    converted = ", ".join(c.converted(dialect.comma_is_decimal) for c in cols)
    relation = source.relation(ordinal=n_bad > 0)
    if n_bad:
        relation = f"(SELECT * FROM {relation} ANTI JOIN {names['bad']} USING (ord))"
    with ThreadPoolExecutor(max_workers=1) as pool:
        counting = None
        if (n_bad or n_shape) and source.user_csv and source.physical_lines is None:
            assert source.csv_path is not None
            counting = pool.submit(_count_lines, source.csv_path)
        copied = con.execute(
            f"COPY (SELECT {converted} FROM {relation}) "
            f"TO {_lit(str(clean_path))} ({PARQUET_WRITE_OPTIONS})"
        ).fetchone()
        if counting is not None:
            source.physical_lines = counting.result()
    rows_clean = int(copied[0]) if copied else 0
    reasons: dict[str, int] = {
        str(kind): int(count)
        for kind, count in con.execute(
            f"SELECT first_problem, count(*) FROM {names['bad']} GROUP BY ALL"
        ).fetchall()
    }
    rows_total = rows_clean + n_bad + n_shape
    if rows_total == 0:
        clean_path.unlink(missing_ok=True)
        raise DumpRejected("файл пуст", ["в файле только заголовок, строк данных нет"])
    for kind, count in con.execute(
        f"SELECT kind, count(*) FROM {names['shape']} GROUP BY ALL"
    ).fetchall():
        reasons[str(kind)] = reasons.get(str(kind), 0) + int(count)
    reasons = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))

    if n_bad or n_shape:
        _map_lines(con, source, names, n_good=rows_clean + n_bad)
        _write_rejects(con, source, plan, key, dup_kind, names, rejects_path)
    return ValidatedTable(
        table=table,
        dialect=dialect,
        clean_path=clean_path,
        rows_total=rows_total,
        rows_clean=rows_clean,
        rows_rejected=n_bad + n_shape,
        rejects_path=rejects_path if (n_bad or n_shape) else None,
        reasons=reasons,
        ignored_columns=ignored,
    )


def _make_plan(
    table: schema.Table,
    position: dict[str, str],
    comma_is_decimal: bool,
    native: frozenset[str] = frozenset(),
) -> _Plan:
    """The parse and checks of every contract column present (``position``: name → c{i})."""
    cols = [
        _Col(c, j, position[c.name], native=position[c.name] in native)
        for j, c in enumerate(table.columns)
        if c.name in position
    ]
    cross, derived = _cross_checks(table, {c.col.name: c for c in cols})
    checks = {c.j: c.checks(cross.get(c.col.name, [])) for c in cols}
    return _Plan(cols, checks, derived, comma_is_decimal)


#: Kinds the CSV reader parses itself in the strict pass. Integers are read as DOUBLE: the
#: reader would round "1.5" into an integer column, and validation must reject it instead.
#: A quarter is read as the contract's ENUM: one lookup instead of a regex and two casts.
NATIVE_TYPES = {
    schema.Kind.INT: "DOUBLE",
    schema.Kind.FLOAT: "DOUBLE",
    schema.Kind.DATE: "DATE",
    schema.Kind.QUARTER: QUARTER_TYPE,
}


def _strict_pass(
    source: _Source,
    dialect: Dialect,
    table: schema.Table,
    position: dict[str, str],
    clean_path: Path,
    con: duckdb.DuckDBPyConnection,
) -> int:
    """The common case in one read: every row valid, written straight to the clean parquet.

    The first problem of any kind (a row of the wrong shape, a value the reader cannot parse,
    a failed check, a duplicate key) abandons the pass: 0 is returned, nothing is kept, and
    the caller runs the checks that find and explain every bad row. A clean file is read once;
    a file with bad rows pays for both. The checks are the same SQL either way, so a row the
    explaining pass would reject never gets through here.
    """
    if source.shape_rows:
        return 0
    if source.user_csv:
        create_quarter_type(con)
        native = {
            position[c.name]: NATIVE_TYPES[c.kind]
            for c in table.columns
            if c.name in position and c.kind in NATIVE_TYPES
        }
        plan = _make_plan(table, position, dialect.comma_is_decimal, frozenset(native))
        relation = source.strict_relation(native, dialect.decimal_comma)
    else:
        plan = _make_plan(table, position, dialect.comma_is_decimal)
        relation = source.relation(ordinal=False)
    outputs = ", ".join(
        f"CAST({c.t} AS {c.col.duckdb_type}) AS {_ident(c.col.name)}" for c in plan.cols
    )
    guard = f"CASE WHEN {plan.valid} THEN TRUE ELSE error('a row fails validation') END"
    try:
        row = con.execute(
            f"COPY (SELECT {outputs} FROM {plan.parsed(relation)} WHERE {guard}) "
            f"TO {_lit(str(clean_path))} ({PARQUET_WRITE_OPTIONS})"
        ).fetchone()
        written = int(row[0]) if row else 0
        if written and table.key:
            # grouped by a 64-bit hash of the key, not the key's text: a collision only sends
            # a clean file to the explaining passes, which compare the keys themselves
            keys = ", ".join(_ident(k) for k in table.key)
            duplicate = con.execute(
                f"SELECT 1 FROM read_parquet({_lit(str(clean_path))}) "
                f"GROUP BY hash({keys}) HAVING count(*) > 1 LIMIT 1"
            ).fetchone()
            written = 0 if duplicate else written
    except duckdb.Error:  # the message may quote the row: personal data, so it is not logged
        written = 0
    if not written:
        clean_path.unlink(missing_ok=True)
    return written


def _scalar_text(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    row = con.execute(sql).fetchone()
    return str(row[0]) if row and row[0] is not None else ""


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _collect_shape_rejects(
    con: duckdb.DuckDBPyConnection,
    source: _Source,
    names: dict[str, str],
    rejects: tuple[str, str] | None,
) -> None:
    """Rows the parser could not split into the header's columns: (line, raw text, reason)."""
    shape = names["shape"]
    con.execute(
        f"CREATE TEMP TABLE {shape} (line BIGINT, raw VARCHAR, kind VARCHAR, reason VARCHAR)"
    )
    if rejects is not None:
        mapping = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in _CSV_ERRORS.items())
        kind = f"coalesce(CASE error_type {mapping} END, error_type)"
        found = "regexp_extract(any_value(error_message), 'Found: ([0-9]+)', 1)"
        expected = len(source.names)
        con.execute(
            f"INSERT INTO {shape} SELECT line, trim(any_value(csv_line), chr(10) || chr(13)), "
            f"any_value({kind}), any_value({kind}) || CASE WHEN any_value(error_type) IN "
            f"('MISSING COLUMNS', 'TOO MANY COLUMNS') THEN ': ожидалось {expected}, найдено ' "
            f"|| {found} ELSE '' END FROM {rejects[0]} GROUP BY line"
        )
    if source.shape_rows:
        con.executemany(
            f"INSERT INTO {shape} VALUES (?, ?, ?, ?)",
            [(line, raw, SHAPE_REASON, reason) for line, raw, reason in source.shape_rows],
        )


def _map_lines(
    con: duckdb.DuckDBPyConnection, source: _Source, names: dict[str, str], n_good: int
) -> None:
    """ord → line in the source file for the reported rows; set-aside rows get physical lines.

    DuckDB numbers only the rows it returns; the rows it set aside (wrong number of fields)
    carry their record numbers, so the i-th returned row sits on line 1 + i + (set-aside rows
    before it). That holds when every physical line is a record. Blank lines and line breaks
    inside quoted fields break it (the line count shows it), and then the file is re-read line
    by line: a line starts a record when the quotes before it are balanced.
    """
    lines, bad, shape, recs = names["lines"], names["bad"], names["shape"], names["recs"]
    needed = (
        f"(SELECT ord FROM {bad} UNION SELECT first_ord AS ord FROM {bad} "
        "WHERE first_ord IS NOT NULL)"
    )
    if not source.user_csv:
        con.execute(f"CREATE TEMP TABLE {lines} AS SELECT ord, ord AS line FROM {needed}")
        return
    assert source.csv_path is not None
    physical = source.physical_lines
    if physical is None:
        physical = _count_lines(source.csv_path)
    n_shape = _scalar(con, f"SELECT count(*) FROM {shape}")
    if physical == 1 + n_good + n_shape:
        con.execute(
            f"CREATE TEMP TABLE {lines} AS "
            f"WITH s AS (SELECT line, row_number() OVER (ORDER BY line) AS m FROM {shape}), "
            "g AS (SELECT line - m - 1 AS g, max(m) AS m FROM s GROUP BY ALL) "
            f"SELECT n.ord, n.ord + 1 + coalesce(g.m, 0) AS line FROM {needed} n "
            "ASOF LEFT JOIN g ON n.ord > g.g"
        )
        return
    scan = (
        f"read_csv({_lit(str(source.csv_path))}, columns = {{'l': 'VARCHAR'}}, "
        f"delim = {_lit(LINE_DELIM)}, quote = '', escape = '', header = false, "
        "auto_detect = false)"
    )
    quotes = "coalesce(length(l) - length(replace(l, '\"', '')), 0)"
    con.execute(
        f"CREATE TEMP TABLE {recs} AS "
        f"WITH p AS (SELECT ordinality AS line, l, {quotes} AS q FROM {scan} WITH ORDINALITY), "
        "s AS (SELECT line, l, coalesce(sum(q) OVER (ORDER BY line "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before FROM p) "
        "SELECT row_number() OVER (ORDER BY line) AS rec, line, "
        "(l IS NULL OR l = chr(13)) AS blank FROM s WHERE before % 2 = 0"
    )
    con.execute(
        f"CREATE TEMP TABLE {lines} AS SELECT r.ord, r.line FROM ("
        f"SELECT row_number() OVER (ORDER BY rec) AS ord, line FROM {recs} "
        f"WHERE rec > 1 AND NOT blank AND rec NOT IN (SELECT line FROM {shape})) r "
        f"SEMI JOIN {needed} n USING (ord)"
    )
    con.execute(f"UPDATE {shape} SET line = r.line FROM {recs} r WHERE r.rec = {shape}.line")


def _write_rejects(
    con: duckdb.DuckDBPyConnection,
    source: _Source,
    plan: _Plan,
    key: list[_Col],
    dup_kind: str,
    names: dict[str, str],
    out: Path,
) -> None:
    """One line per (row, problem), sorted by line; Excel-friendly (BOM, ";")."""
    bad, lines, shape = names["bad"], names["lines"], names["shape"]
    raws = ", ".join(f"b.c{i}" for i in range(len(source.names)))
    nulls = ", ".join(f"NULL::VARCHAR AS c{i}" for i in range(len(source.names)))
    parts = [
        f"SELECT b.ord, {c.j} AS pos, {_lit(c.col.name)} AS col, b.{c.raw} AS value, "
        f"b.{c.r} AS reason, {raws} FROM {bad} b WHERE b.{c.k} IS NOT NULL"
        for c in plan.cols
    ]
    if key:
        key_value = f"concat_ws(', ', {', '.join(f'b.{k.raw}' for k in key)})"
        parts.append(
            f"SELECT b.ord, 1000000 AS pos, {_lit(', '.join(k.col.name for k in key))}, "
            f"{key_value}, {_lit(dup_kind + ': первое вхождение — строка ')} || f.line, {raws} "
            f"FROM {bad} b JOIN {lines} f ON f.ord = b.first_ord"
        )
    shaped = (
        f"SELECT -1 AS pos, NULL::VARCHAR AS col, raw AS value, reason, {nulls}, line FROM {shape}"
    )
    rows = shaped
    if _scalar(con, f"SELECT count(*) FROM {bad}"):
        per_column = " UNION ALL ".join(parts)
        rows = (
            f"SELECT x.* EXCLUDE (ord), l.line FROM ({per_column}) x JOIN {lines} l USING (ord) "
            f"UNION ALL BY NAME {shaped}"
        )
    body = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        con.execute(
            "COPY (SELECT line, col, value, reason, * EXCLUDE (pos, col, value, reason, line) "
            f"FROM ({rows}) ORDER BY line, pos) "
            f"TO {_lit(str(body))} (FORMAT csv, HEADER false, DELIMITER ';')"
        )
        header = [n or f"({i + 1})" for i, n in enumerate(source.names)]
        with out.open("w", encoding="utf-8-sig", newline="") as f:
            csv.writer(f, delimiter=";", lineterminator="\n").writerow(
                ["line", "column", "value", "reason", *header]
            )
        with out.open("ab") as fout, body.open("rb") as fin:
            shutil.copyfileobj(fin, fout, CHUNK_BYTES)
    finally:
        body.unlink(missing_ok=True)
