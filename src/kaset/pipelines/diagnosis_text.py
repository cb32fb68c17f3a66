"""What Crop Guardian's diagnosis says to a farmer, in English and Thai: refusals, doubts and
retake tips. The gate and the models decide (diagnose.py); this module only words the outcome."""

from __future__ import annotations

from kaset.pipelines.advice import Language

RETAKE_TIPS: dict[Language, list[str]] = {
    "en": ["Hold the phone steady and tap the leaf to focus.", "Take the photo in daylight, out of harsh shadow.",
           "Fill the frame with one affected leaf or fruit.", "Use a plain background if you can."],
    "th": ["ถือโทรศัพท์ให้นิ่ง แล้วแตะที่ใบเพื่อปรับโฟกัส", "ถ่ายในที่มีแสงธรรมชาติ หลีกเลี่ยงเงาเข้ม",
           "ถ่ายใบหรือผลที่มีอาการเพียงใบเดียวให้เต็มภาพ", "ถ้าทำได้ ให้ใช้พื้นหลังเรียบ ๆ"],
}


def not_this_crop(label: str, crop: str, language: Language) -> str:
    if language == "th":
        return f"ภาพนี้ดูเหมือน {label} มากกว่า{THAI_CROPS.get(crop, crop)} กรุณาถ่ายภาพใบหรือผลของ{THAI_CROPS.get(crop, crop)}"
    return f"This looks like a {label} rather than {crop}. Take a photo of a {crop} leaf or fruit."


def not_a_plant(label: str, language: Language) -> str:
    if language == "th":
        return f"ภาพนี้ดูเหมือน {label} ไม่ใช่พืช กรุณาถ่ายภาพใบ ผล หรือต้นพืชที่มีอาการ"
    return f"This looks like a {label}, not a plant. Take a photo of the affected leaf, fruit or plant."


def unsure(confidence: float, language: Language) -> str:
    if language == "th":
        return f"ยังไม่แน่ใจ (ความมั่นใจ {confidence:.0%}) กรุณาถ่ายภาพใหม่ตามคำแนะนำด้านล่าง"
    return f"Not sure ({confidence:.0%} confident). Please take another photo following the tips below."


THAI_CROPS = {"mango": "มะม่วง", "rice": "ข้าว", "cassava": "มันสำปะหลัง", "durian": "ทุเรียน"}


def no_model(crop: str, with_models: list[str], language: Language) -> str:
    if language == "th":
        ready = ", ".join(THAI_CROPS.get(c, c) for c in with_models)
        return (f"ยังไม่มีโมเดลวินิจฉัยภาพสำหรับ{THAI_CROPS.get(crop, crop)} (ตอนนี้มีสำหรับ{ready}) "
                "ลองพิมพ์หรือพูดอาการที่พบเพื่อขอคำแนะนำแทน")
    return (f"There is no photo model for {crop} yet (there is for {', '.join(with_models)}). "
            "Describe the symptoms to the advice service instead.")


# --- what the leaf measurements decided (the gate's own signals; see pipelines/leaf_shape.py) ---

def no_leaf(language: Language) -> str:
    if language == "th":
        return "ไม่พบใบพืชสีเขียวในภาพนี้ กรุณาถ่ายภาพใบที่มีอาการหนึ่งใบให้ชัดเจน"
    return "I cannot see a green leaf in this photo. Take a photo of one affected leaf."


def leaf_too_small(language: Language) -> str:
    if language == "th":
        return "ใบในภาพเล็กเกินไป กรุณาถ่ายให้ใกล้ขึ้นจนใบเต็มภาพเกือบทั้งหมด"
    return "The leaf is too small in the photo to judge. Come closer so the leaf fills most of the frame."


def leaf_cut_off(language: Language) -> str:
    if language == "th":
        return "ใบถูกตัดขอบภาพ กรุณาถ่ายให้เห็นทั้งใบ ตั้งแต่โคนถึงปลายใบ"
    return "The leaf runs off the edge of the photo. Take it again with the whole leaf in view, tip to stalk."


def not_one_leaf(language: Language) -> str:
    if language == "th":
        return "ยังแยกใบเดี่ยว ๆ ในภาพนี้ไม่ได้ กรุณาวางใบที่มีอาการหนึ่งใบบนพื้นเรียบแล้วถ่ายใหม่"
    return "I cannot make out a single leaf in this photo. Lay one affected leaf on a plain surface and try again."


def not_crop_leaf(crop: str, too_round: bool, language: Language) -> str:
    """A leaf whose outline is not the crop's: too round or too long and narrow."""
    if language == "th":
        name = THAI_CROPS.get(crop, crop)
        shape = "กลมเกินไป" if too_round else "ยาวและแคบเกินไป"
        return (f"ใบนี้ดูไม่เหมือนใบ{name} (รูปทรง{shape}สำหรับใบ{name}) "
                f"ระบบนี้วินิจฉัยได้เฉพาะใบ{name} ถ้าเป็นพืชอื่น ลองพิมพ์หรือพูดอาการเพื่อขอคำแนะนำ")
    shape = "too round" if too_round else "too long and narrow"
    return (f"This does not look like a {crop} leaf (its outline is {shape} for {crop}). The photo model only "
            f"knows {crop} leaves; for another plant, describe the symptoms to get advice instead.")


def unstable(language: Language) -> str:
    if language == "th":
        return "ผลการวิเคราะห์ไม่คงที่เมื่อมองภาพจากหลายมุม จึงยังไม่แน่ใจ กรุณาถ่ายภาพใหม่ตามคำแนะนำด้านล่าง"
    return ("The answer changes when the photo is looked at slightly differently, so I am not sure. "
            "Please take another photo following the tips below.")
