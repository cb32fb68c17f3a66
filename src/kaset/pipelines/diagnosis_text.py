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
