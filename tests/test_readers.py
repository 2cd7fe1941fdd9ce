"""readers: one uploaded dump → typed clean parquet + quarantine with line numbers and reasons.

Every file is built by hand in tmp_path from `valid_row`, so each test breaks exactly one thing.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import openpyxl
import pytest

from npf_loyalty import readers, schema
from npf_loyalty.readers import (
    Dialect,
    DumpRejected,
    ValidatedTable,
    detect_table,
    read_dump,
    sniff,
    validated_summary,
)

CLIENTS = schema.CLIENTS_QUARTERLY
OPS = schema.TRANSACTIONS
CONTRIB = schema.CONTRIBUTORS

# --- building files ----------------------------------------------------------------------------


def account(n: int) -> str:
    return f"0x{n:032x}"


def valid_row(table: schema.Table, n: int = 1, **overrides: str) -> dict[str, str]:
    """A row every check accepts; `n` varies the ids so that keys stay unique."""
    row: dict[str, str] = {}
    for c in table.columns:
        if c.name == "year":
            value = "2020"
        elif c.name == "npo_oprtn_date":
            value = "2020-02-15"
        elif c.kind is schema.Kind.ID:
            value = account(n)
        elif c.kind is schema.Kind.INT:
            low = int(c.min) if c.min is not None else 1
            value = str(c.allowed[-1]) if c.allowed else str(max(low, 1))
        elif c.kind is schema.Kind.FLOAT:
            value = "1.5"
        elif c.kind is schema.Kind.DATE:
            value = "2019-12-31"
        elif c.kind is schema.Kind.QUARTER:
            value = "2020Q1"
        elif c.kind is schema.Kind.POSTAL:
            value = "443001"
        else:
            value = "САМАРСКАЯ ОБЛ"
        row[c.name] = value
    row.update(overrides)
    return row


def write_csv(
    path: Path,
    rows: Sequence[dict[str, str]],
    *,
    sep: str = ",",
    encoding: str = "utf-8",
    header: Sequence[str] | None = None,
) -> Path:
    header = list(header or rows[0])
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f, delimiter=sep, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([r.get(h, "") for h in header] for r in rows)
    return path


def write_lines(path: Path, lines: Sequence[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def read(path: Path, con: duckdb.DuckDBPyConnection, hint: str = "") -> ValidatedTable:
    """Each file gets its own work dir: outputs are named by table and would overwrite."""
    return read_dump(path, path.parent / f"work_{path.name}", con, name_hint=hint)


def clean(v: ValidatedTable, con: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    relation = con.sql(f"SELECT * FROM read_parquet('{v.clean_path}')")
    return [dict(zip(relation.columns, r, strict=True)) for r in relation.fetchall()]


def rejects(v: ValidatedTable) -> list[dict[str, str]]:
    assert v.rejects_path is not None
    with v.rejects_path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))


def problems(v: ValidatedTable) -> list[tuple[int, str, str]]:
    return [(int(r["line"]), r["column"], r["reason"]) for r in rejects(v)]


# --- one pass for a clean file ----------------------------------------------------------------


def explained(
    path: Path, con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> ValidatedTable:
    """The same file read as if the one-pass read had found a problem."""
    with monkeypatch.context() as m:
        m.setattr(readers, "_strict_pass", lambda *args: 0)
        return read_dump(path, path.parent / f"explained_{path.name}", con)


def clean_dialects(folder: Path) -> dict[str, Path]:
    clients = [valid_row(CLIENTS, 1), valid_row(CLIENTS, 2, balance="0.25", churn="")]
    ops = [valid_row(OPS, 1, npo_sum="1234.5"), valid_row(OPS, 2, npo_sum="-7")]
    russian = [dict(r, npo_sum=r["npo_sum"].replace(".", ",")) for r in ops]
    parquet = folder / "ops.parquet"
    duckdb.sql(
        f"COPY (SELECT * FROM read_csv('{write_csv(folder / 'p.csv', ops, sep=';')}', "
        f"all_varchar = true)) TO '{parquet}' (FORMAT parquet)"
    )
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for line in [list(OPS.names), *([r[n] for n in OPS.names] for r in ops)]:
        sheet.append(line)
    book.save(folder / "ops.xlsx")
    return {
        "xlsx": folder / "ops.xlsx",
        "utf-8 ,": write_csv(folder / "clients.csv", clients),
        "cp1251 ; decimal comma": write_csv(
            folder / "ops.csv", russian, sep=";", encoding="cp1251"
        ),
        "parquet": parquet,
    }


@pytest.mark.parametrize("dialect", ["utf-8 ,", "cp1251 ; decimal comma", "parquet", "xlsx"])
def test_a_clean_file_is_read_in_one_pass(
    dialect: str, tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(clean_dialects(tmp_path)[dialect], con)
    assert v.single_pass and v.rows_rejected == 0


@pytest.mark.parametrize("dialect", ["utf-8 ,", "cp1251 ; decimal comma", "parquet", "xlsx"])
def test_one_pass_writes_the_table_the_explaining_passes_write(
    dialect: str,
    tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = clean_dialects(tmp_path)[dialect]
    once, slow = read(path, con), explained(path, con, monkeypatch)
    assert once.single_pass and not slow.single_pass
    described = "DESCRIBE SELECT * FROM read_parquet('{}')"
    assert (
        con.sql(described.format(once.clean_path)).fetchall()
        == con.sql(described.format(slow.clean_path)).fetchall()
    )
    assert clean(once, con) == clean(slow, con)


@pytest.mark.parametrize(
    "problem",
    [
        {"age": "30.5"},  # the reader would round it into an integer column
        {"pmnts_type": "7"},
        {"quarter": "2020Q5"},
        {"quarter": "1985Q1", "year": "1985"},  # a quarter outside the contract's years
        {"npo_account_id": "0x123"},
        {"frst_pmnt_date": "2020-02-30"},
        {"frst_pmnt_date": "2020-01-05 garbage"},  # the reader alone would keep 2020-01-05
        {"lst_pmnt_date_per_qrtr": "2020-01-05Z"},
    ],
)
def test_a_row_with_a_problem_sends_the_file_to_the_explaining_passes(
    problem: dict[str, str], tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(CLIENTS, 1), valid_row(CLIENTS, 2, **problem)]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert not v.single_pass
    assert (v.rows_clean, v.rows_rejected) == (1, 1)


def test_a_duplicate_key_sends_the_file_to_the_explaining_passes(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, 1), valid_row(CLIENTS, 1)]), con)
    assert not v.single_pass
    assert (v.rows_clean, v.rows_rejected) == (1, 1)


def test_a_row_with_a_wrong_field_count_sends_the_file_to_the_explaining_passes(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(tmp_path / "d.csv", [valid_row(OPS, 1), valid_row(OPS, 2)], sep=";")
    path.write_text(path.read_text() + "1;2;3\n")
    v = read(path, con)
    assert not v.single_pass
    assert (v.rows_clean, v.rows_rejected) == (2, 1)


# --- dialects ------------------------------------------------------------------------------------


def test_utf8_comma_csv_reads_every_row_with_contract_types(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(tmp_path / "dump.csv", [valid_row(CLIENTS, 1), valid_row(CLIENTS, 2)])
    v = read(path, con)
    assert (v.table, v.rows_total, v.rows_clean, v.rows_rejected) == (CLIENTS, 2, 2, 0)
    assert v.rejects_path is None
    described = con.sql(f"DESCRIBE SELECT * FROM '{v.clean_path}'").fetchall()
    types = {name: kind for name, kind, *_ in described}
    assert list(types) == list(CLIENTS.names)
    assert {types[c.name] for c in CLIENTS.columns if c.kind is schema.Kind.INT} == {"BIGINT"}
    assert types["balance"] == "DOUBLE" and types["frst_pmnt_date"] == "DATE"


def test_utf8_with_bom_header_is_recognised(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [valid_row(OPS)], sep=";", encoding="utf-8-sig")
    assert sniff(path) == Dialect("csv", "utf-8", ";", False)
    assert detect_table(path.read_text("utf-8").splitlines()[0].split(";")) is OPS


def test_utf8_with_bom_reads_clean(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write_csv(tmp_path / "d.csv", [valid_row(OPS)], sep=";", encoding="utf-8-sig")
    assert read(path, con).rows_clean == 1


def test_cp1251_semicolon_decimal_comma_csv_reads_same_values_as_utf8(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = valid_row(CLIENTS, region="ЧУВАШСКАЯ РЕСПУБЛИКА", balance="1234.56")
    utf8 = read(write_csv(tmp_path / "u.csv", [row]), con)
    ru = dict(row, balance="1 234,56")
    cp = write_csv(tmp_path / "b.csv", [ru], sep=";", encoding="cp1251")
    assert sniff(cp) == Dialect("csv", "cp1251", ";", True)
    v = read(cp, con)
    assert v.rows_clean == 1
    assert clean(v, con) == clean(utf8, con)


def test_xlsx_reads_same_values_as_csv(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    rows = [valid_row(OPS, 1), valid_row(OPS, 2, npo_sum="-10.25")]
    from_csv = read(write_csv(tmp_path / "c.csv", rows, sep=";"), con)
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(OPS.names))
    for r in rows:
        sheet.append(
            [
                int(r["slctn_nmbr"]),
                r["npo_account_id"],
                float(r["npo_sum"]),
                dt.datetime(2020, 2, 15),
                int(r["npo_oprtn_grp"]),
                2020,
                r["quarter"],
            ]
        )
    book.save(tmp_path / "ops.xlsx")
    v = read(tmp_path / "ops.xlsx", con)
    assert v.dialect == Dialect("xlsx", "utf-8", "", False)
    assert clean(v, con) == clean(from_csv, con)


def test_xlsx_row_wider_than_header_is_quarantined(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(CONTRIB.names))
    sheet.append([1, account(1), 5, "лишнее"])
    sheet.append([1, account(2), 5])
    book.save(tmp_path / "c.xlsx")
    v = read(tmp_path / "c.xlsx", con)
    assert v.rows_clean == 1
    assert problems(v) == [(2, "", "неверное число полей: ожидалось 3, найдено 4")]


def test_xlsx_line_numbers_are_excel_row_numbers_across_empty_rows(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(OPS.names))
    sheet.append(list(valid_row(OPS).values()))
    sheet.append([])
    sheet.append(list(valid_row(OPS, npo_sum="много").values()))
    book.save(tmp_path / "ops.xlsx")
    v = read(tmp_path / "ops.xlsx", con)
    assert v.rows_clean == 1
    assert problems(v) == [(4, "npo_sum", "не число: «много»")]


def test_parquet_dump_is_validated_like_csv(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    src = write_csv(tmp_path / "src.csv", [valid_row(CONTRIB, 1), valid_row(CONTRIB, 2)])
    con.execute(
        f"COPY (SELECT slctn_nmbr::INT AS slctn_nmbr, upper(npo_accnt_id) AS npo_accnt_id, "
        f"CASE WHEN npo_accnt_id LIKE '%2' THEN 20000 ELSE 5 END AS accnt_pnsn_schm "
        f"FROM read_csv('{src}', all_varchar = true)) "
        f"TO '{tmp_path / 'c.parquet'}' (FORMAT parquet)"
    )
    v = read(tmp_path / "c.parquet", con)
    assert v.dialect.format == "parquet"
    assert clean(v, con) == [{"slctn_nmbr": 1, "npo_accnt_id": account(1), "accnt_pnsn_schm": 5}]
    assert problems(v) == [(3, "accnt_pnsn_schm", "вне диапазона 0–10000: 20000")]


def test_sniff_detects_comma_separated_utf8_without_decimal_comma(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [valid_row(CLIENTS)])
    assert sniff(path) == Dialect("csv", "utf-8", ",", False)


# --- values that pass after normalisation ----------------------------------------------------


def test_cp1251_bad_row_is_reported_on_its_line(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(CLIENTS, n, region="ТВЕРСКАЯ ОБЛ") for n in range(1, 4)]
    rows[1]["gender"] = "2"
    v = read(write_csv(tmp_path / "d.csv", rows, sep=";", encoding="cp1251"), con)
    assert v.dialect.encoding == "cp1251"
    assert problems(v) == [(3, "gender", "недопустимое значение 2 (допустимо: -1, 1)")]


def test_postal_code_with_float_suffix_is_accepted(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, postal_code="443001.0")]), con)
    assert clean(v, con)[0]["postal_code"] == "443001"


def test_postal_code_that_lost_its_leading_zero_is_not_guessed(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, postal_code="43001")]), con)
    assert problems(v) == [(2, "postal_code", "почтовый индекс не из 6 цифр: «43001»")]


def test_ids_are_normalised_to_lowercase_with_prefix(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(CONTRIB, 1), valid_row(CONTRIB, 2)]
    rows[0]["npo_accnt_id"] = "0X" + account(0xABC)[2:].upper()
    rows[1]["npo_accnt_id"] = account(0xDEF)[2:]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert [r["npo_accnt_id"] for r in clean(v, con)] == [account(0xABC), account(0xDEF)]


def test_int_column_accepts_integral_float_text(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, age="45.0")]), con)
    assert clean(v, con)[0]["age"] == 45


def test_numbers_with_spaces_and_decimal_comma_are_parsed(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(OPS, npo_sum="1 234,5"), valid_row(OPS, npo_sum="-2\u00a0000,25")]
    v = read(write_csv(tmp_path / "d.csv", rows, sep=";"), con)
    assert [r["npo_sum"] for r in clean(v, con)] == [1234.5, -2000.25]


def test_dotted_and_datetime_dates_are_accepted(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [
        valid_row(OPS, npo_oprtn_date="15.02.2020"),
        valid_row(OPS, npo_oprtn_date="2020-02-15 13:45:00"),
    ]
    v = read(write_csv(tmp_path / "d.csv", rows, sep=";"), con)
    assert [r["npo_oprtn_date"] for r in clean(v, con)] == [dt.date(2020, 2, 15)] * 2


def test_lowercase_quarter_is_normalised(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(OPS, quarter="2020q1")], sep=";"), con)
    assert clean(v, con)[0]["quarter"] == "2020Q1"
    assert not v.single_pass and v.rows_rejected == 0  # the explaining passes normalise it


def test_text_is_trimmed_and_empty_text_is_null(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(CLIENTS, 1, region="  САМАРСКАЯ ОБЛ "), valid_row(CLIENTS, 2, region="  ")]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert [r["region"] for r in clean(v, con)] == ["САМАРСКАЯ ОБЛ", None]


def test_blank_values_in_nullable_columns_become_null(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = valid_row(CLIENTS, postal_code="      ", age=" ", frst_pmnt_date="  ", balance="\u00a0")
    (values,) = clean(read(write_csv(tmp_path / "d.csv", [row]), con), con)
    assert [values[c] for c in ("postal_code", "age", "frst_pmnt_date", "balance")] == [None] * 4


def test_ids_with_surrounding_spaces_are_trimmed(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [
        valid_row(CONTRIB, npo_accnt_id=f"  {account(7).upper()[2:]} "),
        valid_row(CONTRIB, npo_accnt_id=f"{account(8)}   "),
    ]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert [r["npo_accnt_id"] for r in clean(v, con)] == [account(7), account(8)]


def test_quoted_separator_inside_a_value_is_not_a_field_break(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = valid_row(CLIENTS, region='САМАРСКАЯ ОБЛ; г. "Самара"')
    v = read(write_csv(tmp_path / "d.csv", [row], sep=";"), con)
    assert clean(v, con)[0]["region"] == 'САМАРСКАЯ ОБЛ; г. "Самара"'


def test_optional_churn_column_may_be_absent(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = valid_row(CLIENTS)
    del row["churn"]
    v = read(write_csv(tmp_path / "d.csv", [row]), con)
    assert v.rows_clean == 1 and "churn" not in clean(v, con)[0]


# --- bad rows go to the quarantine --------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("age", "abc", "не число: «abc»"),
        ("age", "150", "вне диапазона 0–120: 150"),
        ("age", "30.5", "не целое число: «30.5»"),
        ("pmnts_type", "7", "недопустимое значение 7 (допустимо: 0, 1, 2, 3)"),
        ("year", "", "пустое значение в обязательном поле"),
        ("frst_pmnt_date", "31.02.2020", "неверный формат даты: «31.02.2020»"),
        ("frst_pmnt_date", "31.01.20", "дата вне диапазона 1900–2100: «31.01.20»"),
        ("client_id", "0x12", "неверный идентификатор: «0x12»"),
        ("quarter", "2020-1", "неверный квартал (ожидается вида 2017Q4): «2020-1»"),
        ("balance", "nan", "не число: «nan»"),
        ("balance", "-1", "вне диапазона 0–100000000000: -1"),
    ],
)
def test_bad_value_is_quarantined_with_its_line_and_reason(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, column: str, value: str, reason: str
) -> None:
    rows = [valid_row(CLIENTS, 1), valid_row(CLIENTS, 2, **{column: value}), valid_row(CLIENTS, 3)]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert (v.rows_total, v.rows_clean, v.rows_rejected) == (3, 2, 1)
    assert problems(v) == [(3, column, reason)]
    assert [r["npo_account_id"] for r in clean(v, con)] == [account(1), account(3)]


def test_rejects_keep_the_original_row_as_text(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(OPS, npo_sum="1e")], sep=";"), con)
    (row,) = rejects(v)
    assert row["value"] == "1e" and row["npo_sum"] == "1e" and row["quarter"] == "2020Q1"


def test_rejects_file_is_excel_friendly(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(OPS, npo_sum="x")], sep=";"), con)
    assert v.rejects_path is not None
    raw = v.rejects_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfline;column;value;reason;slctn_nmbr;")


def test_every_problem_of_a_row_is_listed_but_counted_once_by_the_first(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(CLIENTS, age="-3", gender="0")]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert [p[1] for p in problems(v)] == ["gender", "age"]
    assert v.reasons == {"gender: недопустимое значение (допустимо: -1, 1)": 1}


def test_row_with_wrong_field_count_is_quarantined(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    good = ";".join(valid_row(OPS).values())
    lines = [";".join(OPS.names), good, "1;2;3", good, good + ";лишнее", good]
    v = read(write_lines(tmp_path / "d.csv", lines), con)
    assert (v.rows_total, v.rows_clean, v.rows_rejected) == (5, 3, 2)
    assert [(line, reason) for line, _, reason in problems(v)] == [
        (3, "неверное число полей: ожидалось 7, найдено 3"),
        (5, "неверное число полей: ожидалось 7, найдено 8"),
    ]
    assert v.reasons == {"неверное число полей": 2}


def test_line_numbers_after_rows_with_wrong_field_count_stay_exact(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    good = ";".join(valid_row(OPS).values())
    bad = ";".join(valid_row(OPS, npo_oprtn_grp="5").values())
    lines = [";".join(OPS.names), "1;2", good, "1;2", "1;2", bad, good]
    v = read(write_lines(tmp_path / "d.csv", lines), con)
    assert [line for line, _, _ in problems(v)] == [2, 4, 5, 6]


def test_blank_lines_do_not_shift_reported_line_numbers(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    good = ";".join(valid_row(OPS).values())
    bad = ";".join(valid_row(OPS, npo_sum="x").values())
    lines = [";".join(OPS.names), good, "", "", good, bad, "1;2", bad]
    v = read(write_lines(tmp_path / "d.csv", lines), con)
    assert [line for line, _, _ in problems(v)] == [6, 7, 8]


def csv_line(row: dict[str, str], sep: str = ";") -> str:
    return ";".join(f'"{v}"' if ("\n" in v or sep in v) else v for v in row.values())


def test_line_breaks_inside_quoted_fields_do_not_shift_reported_lines(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    lines = [
        ";".join(CLIENTS.names),
        csv_line(valid_row(CLIENTS, 1, region="САМАРСКАЯ\nОБЛ")),  # lines 2–3
        csv_line(valid_row(CLIENTS, 2, age="x")),
        "1;2;3",
        csv_line(valid_row(CLIENTS, 3)),
    ]
    v = read(write_lines(tmp_path / "d.csv", lines), con)
    assert v.rows_clean == 2
    assert [(line, column) for line, column, _ in problems(v)] == [(4, "age"), (5, "")]


def test_crlf_file_with_blank_line_reports_exact_lines(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    good, bad = csv_line(valid_row(OPS)), csv_line(valid_row(OPS, npo_sum="x"))
    path = tmp_path / "d.csv"
    path.write_bytes("\r\n".join([";".join(OPS.names), good, "", bad, good, ""]).encode())
    v = read(path, con)
    assert (v.rows_clean, problems(v)) == (2, [(4, "npo_sum", "не число: «x»")])


def test_duplicate_key_keeps_first_occurrence_and_names_it(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [valid_row(CLIENTS, 1, age="30"), valid_row(CLIENTS, 2), valid_row(CLIENTS, 1, age="31")]
    rows[2]["npo_account_id"] = rows[2]["npo_account_id"].upper().replace("0X", "")
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert [r["age"] for r in clean(v, con)] == [30, 1]
    assert problems(v) == [
        (
            4,
            "npo_account_id, quarter",
            "дубликат ключа (npo_account_id, quarter): первое вхождение — строка 2",
        )
    ]
    assert v.reasons == {"дубликат ключа (npo_account_id, quarter)": 1}


def test_same_operation_twice_is_not_a_duplicate(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(OPS)] * 2, sep=";"), con)
    assert v.rows_clean == 2


def test_year_not_matching_quarter_is_rejected(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, year="2019")]), con)
    assert problems(v) == [(2, "year", "год 2019 не совпадает с кварталом 2020Q1")]


def test_operation_date_outside_its_quarter_is_rejected(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = valid_row(OPS, npo_oprtn_date="01.04.2020")
    v = read(write_csv(tmp_path / "d.csv", [row], sep=";"), con)
    assert problems(v) == [(2, "npo_oprtn_date", "дата операции 2020-04-01 вне квартала 2020Q1")]


# --- whole-file rejections ------------------------------------------------------------------


def test_binary_garbage_is_rejected_whole(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(DumpRejected, match="двоичный"):
        read(path, con)


def test_a_csv_the_parser_cannot_split_into_lines_is_rejected_with_a_reason(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, n) for n in range(1, 5)])
    header, first, second, *rest = path.read_text().split("\n")
    path.write_text(f"{header}\r\n{first}\n{second}\r\n" + "\n".join(rest))
    with pytest.raises(DumpRejected, match="не разбирается как CSV") as rejected:
        read(path, con)
    assert "CRLF или LF" in rejected.value.report()


def test_empty_file_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"")
    with pytest.raises(DumpRejected, match="пуст"):
        read(path, con)


def test_header_without_rows_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write_lines(tmp_path / "d.csv", [";".join(OPS.names)])
    with pytest.raises(DumpRejected, match="пуст"):
        read(path, con)


def test_missing_columns_are_listed_with_unexpected_ones(tmp_path: Path) -> None:
    header = [n for n in OPS.names if n not in ("npo_sum", "year")] + ["summa"]
    with pytest.raises(DumpRejected) as caught:
        detect_table(header)
    assert "trnsctns" in caught.value.reason
    assert caught.value.details == ["нет столбцов: npo_sum, year", "лишние столбцы: summa"]


def test_unknown_table_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write_lines(tmp_path / "d.csv", ["фамилия;имя;отчество", "Иванов;Иван;Иванович"])
    with pytest.raises(DumpRejected, match="неизвестная таблица"):
        read(path, con)


def test_contract_column_repeated_in_header_is_rejected(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    header = [*CONTRIB.names, "accnt_pnsn_schm"]
    path = write_csv(tmp_path / "d.csv", [valid_row(CONTRIB)], header=header)
    with pytest.raises(DumpRejected, match="повторяются"):
        read(path, con)


def test_rejection_report_is_readable_text() -> None:
    report = DumpRejected("в заголовке нет столбцов", ["нет столбцов: year"]).report()
    assert report == "Файл не принят: в заголовке нет столбцов\n  – нет столбцов: year"


def test_file_name_only_breaks_ties_between_complete_headers() -> None:
    header = [*OPS.names, *CONTRIB.names]
    assert detect_table(header, "cntrbtrs_2024.csv") is CONTRIB
    assert detect_table(list(OPS.names), "cntrbtrs_2024.csv") is OPS


# --- extras and the summary ---------------------------------------------------------------


def test_extra_columns_are_ignored_and_reported(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [dict(valid_row(CONTRIB), comment="проверено", Load_Date="2024-04-01")]
    v = read(write_csv(tmp_path / "d.csv", rows), con)
    assert v.ignored_columns == ("comment", "Load_Date")
    assert list(clean(v, con)[0]) == list(CONTRIB.names)


def test_summary_is_json_serialisable(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    v = read(write_csv(tmp_path / "d.csv", [valid_row(CONTRIB, accnt_pnsn_schm="x")]), con)
    summary = json.loads(json.dumps(validated_summary(v), ensure_ascii=False))
    assert summary["table"] == "cntrbtrs"
    assert summary["reasons"] == {"accnt_pnsn_schm: не число": 1}
    assert summary["rows_rejected"] == 1 and summary["rejects_file"] == "cntrbtrs.rejects.csv"


def test_connection_optimizer_settings_are_restored(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    con.execute("SET disabled_optimizers = 'join_order'")
    read(write_csv(tmp_path / "d.csv", [valid_row(CONTRIB)]), con)
    setting = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()
    assert setting == ("join_order",)


def test_reading_leaves_no_temp_tables_or_files(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(tmp_path / "d.csv", [valid_row(CLIENTS, age="x")], encoding="cp1251")
    v = read(path, con)
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)
    assert sorted(p.name for p in v.clean_path.parent.iterdir()) == [
        "clnts_fin_prtrt.parquet",
        "clnts_fin_prtrt.rejects.csv",
    ]
