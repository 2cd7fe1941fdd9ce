"""The documented contract is the schema."""

from __future__ import annotations

from pathlib import Path

from npf_loyalty import schema
from npf_loyalty.contract_doc import render_contract

ROOT = Path(__file__).parents[1]


def test_docs_data_contract_is_generated_from_the_schema() -> None:
    documented = (ROOT / "docs" / "data-contract.md").read_text()
    assert documented == render_contract(), "run: npf-loyalty contract > docs/data-contract.md"


def test_every_column_name_is_defined_once_per_table() -> None:
    for table in schema.TABLES.values():
        assert len(set(table.names)) == len(table.names)


def test_feature_names_are_unique_and_inputs_exclude_labels() -> None:
    names = [f.name for f in schema.FEATURES]
    assert len(set(names)) == len(names)
    assert not set(schema.LABELS) & set(schema.MODEL_INPUTS)
    assert "churn" not in schema.MODEL_INPUTS


def test_table_keys_are_columns_of_their_table() -> None:
    for table in schema.TABLES.values():
        assert set(table.key) <= set(table.names)
