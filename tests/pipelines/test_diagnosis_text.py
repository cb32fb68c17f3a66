"""The farmer-facing wording of diagnosis outcomes: Thai names for every ImageNet class the plant
gate may name (a Thai message never carries English), and English with the right article."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kaset.pipelines.diagnosis_text import (
    IMAGENET_TH,
    RETAKE_TIPS,
    THAI_CROPS,
    english_label,
    imagenet_thai,
    no_model,
    not_a_plant,
    not_this_crop,
    unsure,
    with_article,
)

THAI = re.compile("[\u0e00-\u0e7f]")
LATIN = re.compile("[A-Za-z]")


def test_every_imagenet_class_has_a_thai_name() -> None:
    assert len(IMAGENET_TH) == 1000
    for index in range(1000):
        name = imagenet_thai(index)
        assert name and THAI.search(name) and not LATIN.search(name), (index, name)
    assert imagenet_thai(None) is None and imagenet_thai(1000) is None and imagenet_thai(-1) is None


@pytest.mark.parametrize(("first", "last", "word"), [
    (151, 268, "สุนัข"), (281, 285, "แมว"), (52, 68, "งู"), (321, 326, "ผีเสื้อ"), (991, 997, "เห็ด"),
])
def test_groups_by_index_range(first: int, last: int, word: str) -> None:
    assert all(word in IMAGENET_TH[i] for i in range(first, last + 1))


def test_specific_names_of_common_classes() -> None:
    assert IMAGENET_TH[967] == "กาแฟเอสเพรสโซ"  # espresso
    assert IMAGENET_TH[968] == "ถ้วย"  # cup
    assert IMAGENET_TH[549] == "ซองจดหมาย"  # envelope
    assert IMAGENET_TH[825] == "กำแพงหิน"  # stone wall
    assert IMAGENET_TH[235] == "สุนัขเยอรมันเชพเพิร์ด"  # German shepherd
    assert IMAGENET_TH[981] == "นักกีฬา" and IMAGENET_TH[982] == "เจ้าบ่าว"  # the person-like classes
    assert IMAGENET_TH[985] == "ดอกเดซี่" and IMAGENET_TH[987] == "ข้าวโพด"


def test_the_table_lines_up_with_the_installed_gate_labels(models_dir: Path) -> None:
    found = sorted(models_dir.glob("efficientnet-lite0/*/labels.json"))
    if not found:
        pytest.skip("efficientnet-lite0 is not installed in the test models folder")
    labels = json.loads(found[-1].read_text(encoding="utf-8"))
    assert len(labels) == len(IMAGENET_TH)
    assert (labels[967], labels[549], labels[281], labels[151], labels[268]) == (
        "espresso", "envelope", "tabby", "Chihuahua", "Mexican hairless")


def test_thai_refusals_contain_no_latin_letters() -> None:
    for index in range(1000):
        for message in (not_a_plant("some English label", "th", index=index),
                        not_this_crop("some English label", "mango", "th", index=index)):
            assert THAI.search(message) and not LATIN.search(message), (index, message)


def test_thai_messages_without_an_index_leave_the_label_out() -> None:
    assert not_a_plant("German shepherd", "th") == "ภาพนี้ดูไม่เหมือนพืช กรุณาถ่ายภาพใบ ผล หรือต้นพืชที่มีอาการ"
    assert not LATIN.search(not_this_crop("daisy", "mango", "th"))
    assert not_a_plant("German shepherd", "th", index=235).startswith("ภาพนี้ดูเหมือนสุนัขเยอรมันเชพเพิร์ด ไม่ใช่พืช")
    assert not_this_crop("daisy", "mango", "th", index=985).startswith("ภาพนี้ดูเหมือนดอกเดซี่มากกว่ามะม่วง")


def test_the_other_thai_messages_contain_no_latin_letters() -> None:
    messages = [unsure(0.42, "th"), *RETAKE_TIPS["th"],
                *(no_model(crop, ["mango"], "th") for crop in THAI_CROPS)]
    for message in messages:
        assert THAI.search(message) and not LATIN.search(message), message


@pytest.mark.parametrize(("label", "expected"), [
    ("espresso", "an espresso"), ("envelope", "an envelope"), ("tabby", "a tabby"), ("cat", "a cat"),
    ("unicycle", "a unicycle"), ("hourglass", "an hourglass"), ("umbrella", "an umbrella"),
    ("iPod", "an iPod"), ("CD player", "a CD player"), ("European fire salamander", "a European fire salamander"),
    ("sunglasses", "sunglasses"), ("hay", "hay"), ("crane (n02012849)", "a crane"), ("Eskimo dog", "an Eskimo dog"),
])
def test_english_articles(label: str, expected: str) -> None:
    assert with_article(label) == expected


def test_english_messages() -> None:
    assert not_a_plant("espresso", "en", index=967).startswith("This looks like an espresso, not a plant.")
    assert not_a_plant("envelope", "en").startswith("This looks like an envelope, not a plant.")
    assert not_this_crop("daisy", "mango", "en", index=985).startswith("This looks like a daisy rather than mango.")
    assert not_a_plant("", "en").startswith("This does not look like a plant.")
    assert english_label("maillot (n03710637)") == "maillot"
