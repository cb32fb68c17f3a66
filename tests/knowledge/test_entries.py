"""Integrity checks for the curated crop-health knowledge base."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kaset.knowledge.schema import (
    ENTRIES_DIR,
    Entry,
    KnowledgeBaseError,
    LocalizedContent,
    index_by_model_label,
    load_entries,
)

THAI = re.compile(r"[\u0E00-\u0E7F]")
MANGO_LABELS = [
    "Anthracnose",
    "Bacterial Canker",
    "Healthy",
    "Powdery Mildew",
    "Scab",
    "Sooty Mould",
    "Stem End Rot",
]
REQUIRED_IDS = {
    "mango-anthracnose",
    "mango-bacterial-canker",
    "mango-healthy",
    "mango-powdery-mildew",
    "mango-scab",
    "mango-sooty-mould",
    "mango-stem-end-rot",
    "rice-blast",
    "rice-brown-spot",
    "rice-bacterial-leaf-blight",
    "rice-sheath-blight",
    "rice-brown-planthopper",
    "cassava-mosaic-disease",
    "cassava-mealybug",
    "cassava-bacterial-blight",
    "cassava-root-rot",
    "durian-phytophthora-root-rot",
    "durian-leaf-blight",
    "durian-psyllid",
}

ENTRIES = load_entries()
ENTRY_IDS = [entry.id for entry in ENTRIES]


def _by_id(entry_id: str) -> Entry:
    return next(entry for entry in ENTRIES if entry.id == entry_id)


def test_every_entry_file_loads() -> None:
    files = sorted(ENTRIES_DIR.rglob("*.yaml"))
    assert len(files) == len(ENTRIES) >= 21


def test_ids_match_file_names_and_folders() -> None:
    for path in ENTRIES_DIR.rglob("*.yaml"):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert raw["id"] == path.stem, path
        assert raw["crop"] == path.parent.name, path


def test_required_entries_present() -> None:
    assert set(ENTRY_IDS) >= REQUIRED_IDS
    # at least one more rice problem and one durian fruit problem beyond the required list
    assert len([i for i in ENTRY_IDS if i.startswith("rice-")]) >= 6
    assert len([i for i in ENTRY_IDS if i.startswith("durian-")]) >= 4


def test_all_crops_covered() -> None:
    assert {entry.crop for entry in ENTRIES} == {"mango", "rice", "cassava", "durian"}


def test_mango_labels_each_mapped_exactly_once() -> None:
    mapped = [label for entry in ENTRIES for label in entry.model_labels if label.startswith("mango-disease/")]
    assert sorted(mapped) == sorted(f"mango-disease/{label}" for label in MANGO_LABELS)
    index = index_by_model_label(ENTRIES)
    assert index["mango-disease/Healthy"].kind == "healthy"
    for label in MANGO_LABELS:
        assert index[f"mango-disease/{label}"].crop == "mango"


def test_mango_disease_model_labels_only_on_mango_entries() -> None:
    for entry in ENTRIES:
        for label in entry.model_labels:
            if label.startswith("mango-disease/"):
                assert entry.crop == "mango", entry.id


@pytest.mark.parametrize("entry_id", ENTRY_IDS)
def test_every_entry_has_a_source(entry_id: str) -> None:
    entry = _by_id(entry_id)
    assert entry.sources
    for source in entry.sources:
        assert source.title and source.publisher
        assert source.url == "" or source.url.startswith(("http://", "https://"))


def _assert_complete(block: LocalizedContent) -> None:
    for text in (block.name, block.summary, block.cause, block.season_notes, block.region_notes):
        assert text.strip()
    for items in (block.symptoms, block.cultural_treatment, block.safety, block.prevention, block.keywords):
        assert items and all(item.strip() for item in items)
    for item in block.chemical_treatment:
        assert item.active_ingredient.strip() and item.how.strip()


@pytest.mark.parametrize("entry_id", ENTRY_IDS)
def test_both_languages_complete(entry_id: str) -> None:
    entry = _by_id(entry_id)
    _assert_complete(entry.en)
    _assert_complete(entry.th)
    assert len(entry.en.chemical_treatment) == len(entry.th.chemical_treatment)


@pytest.mark.parametrize("entry_id", ENTRY_IDS)
def test_thai_block_is_thai_and_english_block_is_not(entry_id: str) -> None:
    entry = _by_id(entry_id)
    for text in entry.th.texts():
        assert THAI.search(text), f"{entry_id}: Thai text without Thai script: {text!r}"
    for text in entry.en.texts():
        assert not THAI.search(text), f"{entry_id}: English text contains Thai script: {text!r}"


@pytest.mark.parametrize("entry_id", ENTRY_IDS)
def test_summary_is_short(entry_id: str) -> None:
    entry = _by_id(entry_id)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", entry.en.summary.strip()) if s]
    assert 2 <= len(sentences) <= 4, entry.en.summary


@pytest.mark.parametrize("entry_id", ENTRY_IDS)
def test_doses_only_with_label_instruction(entry_id: str) -> None:
    """Any chemical option must point the farmer to the product label."""
    entry = _by_id(entry_id)
    for item in entry.en.chemical_treatment:
        assert "label" in item.how.lower(), f"{entry_id}: {item.active_ingredient}"
    for item in entry.th.chemical_treatment:
        assert "ฉลาก" in item.how, f"{entry_id}: {item.active_ingredient}"


def test_healthy_entry_recommends_no_chemicals() -> None:
    healthy = [entry for entry in ENTRIES if entry.kind == "healthy"]
    assert healthy
    for entry in healthy:
        assert not entry.en.chemical_treatment and not entry.th.chemical_treatment


def test_cassava_mosaic_has_official_guidance() -> None:
    entry = _by_id("cassava-mosaic-disease")
    en = " ".join(entry.en.texts()).lower()
    for phrase in ("clean", "report", "uproot", "2018"):
        assert phrase in en
    assert "แจ้ง" in " ".join(entry.th.texts())


def _write(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def _minimal(entry_id: str) -> dict[str, object]:
    raw = yaml.safe_load((ENTRIES_DIR / "rice" / "rice-blast.yaml").read_text(encoding="utf-8"))
    raw["id"] = entry_id
    return raw


def test_loader_accepts_a_valid_custom_directory(tmp_path: Path) -> None:
    _write(tmp_path / "rice" / "rice-blast.yaml", _minimal("rice-blast"))
    assert [entry.id for entry in load_entries(tmp_path)] == ["rice-blast"]


def test_loader_rejects_duplicate_ids(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "rice" / "rice-blast.yaml", _minimal("rice-blast"))
    _write(tmp_path / "b" / "rice" / "rice-blast.yaml", _minimal("rice-blast"))
    with pytest.raises(KnowledgeBaseError, match="duplicate id"):
        load_entries(tmp_path)


def test_loader_rejects_crop_folder_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "mango" / "rice-blast.yaml", _minimal("rice-blast"))
    with pytest.raises(KnowledgeBaseError, match="does not match folder"):
        load_entries(tmp_path)


def test_loader_rejects_id_file_name_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "rice" / "rice-other.yaml", _minimal("rice-blast"))
    with pytest.raises(KnowledgeBaseError, match="does not match the file name"):
        load_entries(tmp_path)


def test_loader_rejects_invalid_entry(tmp_path: Path) -> None:
    raw = _minimal("rice-blast")
    raw["sources"] = []
    _write(tmp_path / "rice" / "rice-blast.yaml", raw)
    with pytest.raises(KnowledgeBaseError):
        load_entries(tmp_path)


def test_loader_rejects_unknown_fields(tmp_path: Path) -> None:
    raw = _minimal("rice-blast")
    raw["dose"] = "lots"
    _write(tmp_path / "rice" / "rice-blast.yaml", raw)
    with pytest.raises(KnowledgeBaseError):
        load_entries(tmp_path)


def test_index_rejects_label_mapped_twice() -> None:
    a = _by_id("mango-anthracnose")
    b = a.model_copy(update={"id": "mango-copy"})
    with pytest.raises(KnowledgeBaseError):
        index_by_model_label([a, b])
