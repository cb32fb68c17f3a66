"""kaset.language: any Thai, and the share of letters in Thai or Latin script."""

from __future__ import annotations

import pytest

from kaset.language import THAI_SHARE, has_thai, latin_share, letter_count, thai_share, written_language


def test_has_thai_is_any_thai_character() -> None:
    assert has_thai("ข้าว") and has_thai("Rice is ข้าว in Thai") and has_thai("๑๒๓")  # Thai digits too
    assert not has_thai("Rice blast") and not has_thai("") and not has_thai("稲")


def test_letters_leave_out_marks_digits_and_punctuation() -> None:
    # "น้ำ": น and ำ are letters, the tone mark ้ (a combining mark) is not.
    assert letter_count("น้ำ") == 2
    assert letter_count("pH 5.5, ๑๒!") == 2
    # Superscripts and fractions are numbers, not letters: "m²" is one letter.
    assert letter_count("m² ½") == 1


@pytest.mark.parametrize("text,thai,latin", [
    ("ใบข้าวมีจุด", 1.0, 0.0),
    ("Grey spots on rice leaves", 0.0, 1.0),
    ("ฉีด mancozeb 2 ครั้ง", 5 / 13, 8 / 13),  # ฉ ด ค ร ง against m-a-n-c-o-z-e-b
    ("Café", 0.0, 0.75),  # é is a letter, but not plain Latin
    ("", 0.0, 0.0),
    ("123 ...", 0.0, 0.0),
])
def test_shares_of_the_letters(text: str, thai: float, latin: float) -> None:
    assert thai_share(text) == pytest.approx(thai) and latin_share(text) == pytest.approx(latin)


def test_written_language_is_thai_from_the_threshold_on() -> None:
    assert written_language("ใบข้าวมีจุดสีน้ำตาล ใช้ tricyclazole ได้ไหม") == "th"
    assert written_language("ฉีด mancozeb 2 ครั้ง") == "th"  # Latin names inside Thai text
    assert written_language("What is ข้าว blast and how do I treat it?") == "en"  # one Thai word quoted
    assert written_language("") == "en" and written_language("12345") == "en"
    # Exactly at the threshold counts as Thai: 3 Thai letters out of 10.
    assert THAI_SHARE == 0.3 and written_language("กขค abcdefg") == "th"
    assert written_language("กข abcdefgh") == "en"
