"""Every document class round-trips, its shipped JSON Schema is current, and real documents validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tap_edge.documents import (
    DOCUMENTS,
    CheckReport,
    DocumentError,
    document_from_dict,
    read_document,
    schema_file,
    schema_text,
)

FIXTURES = Path(__file__).parent / "fixtures"
#: Real documents written by the commands (tools/make_report_fixtures.py), by schema.
SAMPLES: dict[str, list[Path]] = {}
for _f in sorted(FIXTURES.glob("*.json")):
    SAMPLES.setdefault(json.loads(_f.read_text()).get("schema", "?"), []).append(_f)


@pytest.mark.parametrize("schema", DOCUMENTS.list())
def test_schema_file_is_current(schema: str) -> None:
    cls = DOCUMENTS.get(schema)
    path = schema_file(cls)
    assert path.exists() and path.read_text() == schema_text(cls), \
        f"{path.name} is stale: run .venv/bin/python -m tap_edge.documents"


@pytest.mark.parametrize("schema", DOCUMENTS.list())
def test_every_document_has_a_real_sample(schema: str) -> None:
    assert SAMPLES.get(schema), f"no fixture of {schema} in tests/fixtures (tools/make_report_fixtures.py)"


@pytest.mark.parametrize("path", [p for ps in SAMPLES.values() for p in ps], ids=lambda p: p.name)
def test_round_trip_and_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(path.read_text())
    doc = read_document(path)
    assert doc.to_dict() == json.loads(doc.to_json())
    assert type(doc).from_dict(doc.to_dict()) == doc
    jsonschema.validate(doc.to_dict(), json.loads(schema_file(type(doc)).read_text()))
    jsonschema.validate(data, json.loads(schema_file(type(doc)).read_text()))


def test_wrong_schema_version_and_field_are_one_line(tmp_path: Path) -> None:
    good = json.loads(SAMPLES["tap-edge/check-report"][0].read_text())
    cases = {
        "other version": ({**good, "version": 99}, "version 99; this tap-edge reads version 1"),
        "other schema": ({**good, "schema": "tap-edge/plan"}, "field"),
        "unknown schema": ({**good, "schema": "acme/thing"}, "not a tap-edge document"),
        "bad field": ({**good, "all_fit": "maybe"}, "field 'all_fit'"),
        "extra field": ({**good, "surprise": 1}, "field 'surprise'"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(DocumentError, match=message) as e:
            document_from_dict(data, name)
        assert "\n" not in str(e.value)
    with pytest.raises(DocumentError, match="not a tap-edge/check-report document"):
        CheckReport.from_dict({**good, "schema": "tap-edge/plan"})
