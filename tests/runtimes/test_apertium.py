"""Apertium with the language pairs installed from Debian (eng-spa, eng-cat, en-gl)."""

from __future__ import annotations

import shutil

import pytest

from kaset.errors import InvalidRequest
from kaset.registry.catalog import Catalog
from kaset.runtimes.apertium import ApertiumRuntime, TranslationTimeout

pytestmark = pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium is not installed")


def make(catalog: Catalog, **params: object) -> ApertiumRuntime:
    spec = catalog.resolve("apertium")
    if params:
        spec = spec.model_copy(update={"params": {**spec.params, **params}})
    runtime = ApertiumRuntime(spec, None)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def apertium(catalog: Catalog) -> ApertiumRuntime:
    return make(catalog)


def test_pairs_are_the_installed_modes_in_iso_639_1(apertium: ApertiumRuntime) -> None:
    pairs = apertium.pairs()
    for pair in [("en", "es"), ("es", "en"), ("en", "ca"), ("ca", "en"), ("en", "gl"), ("gl", "en")]:
        assert pair in pairs
    assert all(len(s) == 2 and len(t) == 2 for s, t in pairs)  # variants hidden behind their base pair


def test_english_to_spanish(apertium: ApertiumRuntime) -> None:
    [spanish] = apertium.translate(["The farmer plants rice."], "en", "es")
    assert "arroz" in spanish
    assert "*" not in spanish


def test_apertium_codes_and_regional_tags_are_accepted(apertium: ApertiumRuntime) -> None:
    [by_iso3] = apertium.translate(["The farmer plants rice."], "eng", "spa")
    [by_region] = apertium.translate(["The farmer plants rice."], "en-GB", "es-MX")
    assert by_iso3 == by_region
    [english] = apertium.translate(["El agricultor planta arroz."], "es", "en")
    assert "rice" in english


def test_variant_targets(apertium: ApertiumRuntime) -> None:
    [central] = apertium.translate(["The farmer plants rice."], "en", "ca")
    [valencian] = apertium.translate(["The farmer plants rice."], "en", "ca-valencia")
    assert "arròs" in central and "arròs" in valencian
    assert central != valencian  # pagès / pagés


def test_unsupported_pair_lists_what_is_installed(apertium: ApertiumRuntime) -> None:
    with pytest.raises(InvalidRequest) as err:
        apertium.translate(["The farmer plants rice."], "en", "th")
    assert "en->es" in err.value.message
    assert err.value.status_code == 400
    with pytest.raises(InvalidRequest):
        apertium.translate(["x"], "english", "es")


def test_unknown_words_are_not_starred(apertium: ApertiumRuntime) -> None:
    [out] = apertium.translate(["The xyzzy farmer"], "en", "es")
    assert "xyzzy" in out and "*" not in out


def test_blank_texts_come_back_unchanged(apertium: ApertiumRuntime) -> None:
    assert apertium.translate(["", "   ", "\n"], "en", "es") == ["", "   ", "\n"]


def test_a_batch_translates_each_text_as_alone(apertium: ApertiumRuntime) -> None:
    texts = [
        "The farmer plants rice.",
        "Hello world",  # no final punctuation: must not run into the next text
        "I have two dogs and three cats.",
        "  leading and trailing spaces  ",
        "",
        "Line one\nline two",
        "Para one.\n\n\nPara two.",
        "What time is it?",
        "tab\there",
    ]
    batch = apertium.translate(texts, "en", "es")
    alone = [apertium.translate([text], "en", "es")[0] for text in texts]
    assert batch == alone
    assert batch[1] == "Hola Mundo"
    assert batch[2] == "Tengo dos perros y tres gatos."  # no stray blank from the dropped "I"
    assert batch[3].startswith("  ") and batch[3].endswith("  ")
    assert batch[5].count("\n") == 1 and batch[6].count("\n") == 3


def test_a_stuck_pipeline_is_killed(catalog: Catalog) -> None:
    impatient = make(catalog, timeout=0.001)
    with pytest.raises(TranslationTimeout) as err:
        impatient.translate(["The farmer plants rice."], "en", "es")
    assert err.value.status_code == 504
