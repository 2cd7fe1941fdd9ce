"""docs/data-contract.md, rendered from the schema so the document cannot drift from the code."""

from __future__ import annotations

from npf_loyalty import schema

INTRO = """\
# The data contract

What the fund's back office uploads, column by column. Generated from
`src/npf_loyalty/schema.py` by `npf-loyalty contract > docs/data-contract.md`; a test fails when
the two disagree.

## How to upload

- One file is one table. The table is recognised by its header (the file name only breaks ties).
- Formats: CSV (UTF-8, UTF-8 with BOM, or cp1251; `,` or `;` separators; decimal point or
  decimal comma with `;`), XLSX (first sheet), parquet.
- Each upload is a **full snapshot** of its table: a new `clnts_fin_prtrt` replaces the
  previous one as the input of the features. Uploading the same bytes again changes nothing.
- The features are rebuilt once `clnts_fin_prtrt` and `trnsctns` are both there, and wait
  while the operations end before the panel's last quarter (a new quarter's panel with last
  quarter's operations would make every client look as if they had stopped paying). Upload
  the three tables of a quarter together, `trnsctns` last if you can: then they are built once.
- Upload under `uploads/` (any sub-folder). The raw file is kept as it is, never modified or
  deleted.
- Rows that break the contract go to `quarantine/<table>/<digest>/rejected_rows.csv` (source
  line number, column, value, reason) with a summary in `report.md`; the other rows are used.
  A file that is not the contract at all (unknown table, missing columns, binary data, empty)
  is rejected whole with a report in `quarantine/rejected/<digest>/report.md`.
- Ids are `0x` followed by 32 hexadecimal digits; upper case and a missing `0x` are accepted.
- Dates: `YYYY-MM-DD` or `DD.MM.YYYY`. Quarters: `2017Q4`.
- Postal codes: six digits; `443001.0` (a float export) is accepted. Five-digit numbers are
  rejected rather than guessed.
- Region: free text as the fund's systems write it (`САМАРСКАЯ ОБЛ`, `Самарская область`,
  `ОБЛ САМАРСКАЯ`); matched to the bundled list of regions, then the postal prefix, else
  `unknown`.
"""

KIND_TEXT = {
    schema.Kind.ID: "id",
    schema.Kind.INT: "integer",
    schema.Kind.FLOAT: "number",
    schema.Kind.DATE: "date",
    schema.Kind.QUARTER: "quarter",
    schema.Kind.POSTAL: "postal code",
    schema.Kind.TEXT: "text",
}


def _rule(column: schema.Column) -> str:
    parts = []
    if column.allowed is not None:
        parts.append("one of " + ", ".join(str(v) for v in column.allowed))
    if column.min is not None or column.max is not None:
        low = "" if column.min is None else f"{column.min:g}"
        high = "" if column.max is None else f"{column.max:g}"
        parts.append(f"{low} … {high}")
    parts.append("may be empty" if column.nullable else "required")
    if column.optional:
        parts.append("column may be absent")
    return "; ".join(parts)


def render_contract() -> str:
    lines = [INTRO]
    for table in schema.TABLES.values():
        lines += [
            f"## `{table.name}` — {table.meaning}",
            "",
            f"Original separator: `{table.separator}`. "
            + (
                f"Key: `{', '.join(table.key)}` (a repeated key is quarantined)."
                if table.key
                else "No key: identical operations are legitimate."
            ),
            "",
            "| column | type | meaning | rule |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{c.name}` | {KIND_TEXT[c.kind]} | {c.meaning} | {_rule(c)} |"
            for c in table.columns
        ]
        lines.append("")
    lines += [
        "## The feature table (`features/<version>/quarter=…/`)",
        "",
        "One row per account and quarter, built by ingest. Inputs at quarter t use data up to",
        "the end of t only; labels look ahead and are never inputs.",
        "",
        "| column | role | type | meaning |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{f.name}` | {f.role.value}{' (categorical)' if f.categorical else ''} "
        f"| {f.duckdb_type} | {f.meaning} |"
        for f in schema.FEATURES
    ]
    return "\n".join(lines) + "\n"
