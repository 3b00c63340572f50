"""The package's schema copies are the repository's, and encode as the golden bytes."""

from __future__ import annotations

import json
import pathlib
from importlib import resources

import pytest

from warrant.kafka import SCHEMA_FILES

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_shipped_schema_equals_the_repositorys_byte_for_byte(name):
    shipped = resources.files("warrant").joinpath("schemas", name).read_bytes()
    assert shipped == (REPO / "schemas" / name).read_bytes(), (
        f"src/warrant/schemas/{name} drifted from schemas/{name}: copy it again"
    )


@pytest.mark.parametrize(
    ("vector", "schema"),
    [("proposal_submitted", "proposal_submitted.avsc"), ("signal_submitted", "signal_submitted.avsc")],
)
def test_single_object_encoding_matches_the_golden_bytes(vector, schema):
    from fastavro.schema import parse_schema

    from warrant.kafka import single_object

    vectors = {v["name"]: v for v in json.loads((REPO / "schemas/golden/vectors.json").read_text())}
    parsed = parse_schema(
        json.loads(resources.files("warrant").joinpath("schemas", schema).read_text())
    )
    assert single_object(parsed, vectors[vector]["value"]).hex() == vectors[vector]["hex"]
