"""Language codes a client may give a voice or a job: BCP 47 tags whose primary subtag is an
ISO 639-1 code (or one of the few ISO 639-3 codes speech engines use, such as `yue`)."""

from __future__ import annotations

import re

_ISO_639_1 = (
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv "
    "cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr "
    "ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw "
    "ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv "
    "ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr "
    "ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi "
    "yo za zh zu"
)
# Cantonese, Wu, Min Nan, Hakka: spoken by CosyVoice and named by their ISO 639-3 codes.
_ISO_639_3 = "yue wuu nan hak cmn"
LANGUAGES = frozenset((_ISO_639_1 + " " + _ISO_639_3).split())

_TAG = re.compile(r"^([a-z]{2,3})(-[A-Za-z0-9]{1,8})*$")
MAX_TAG_CHARS = 16


def normalize_language(tag: str) -> str | None:
    """The tag with its primary subtag lower-cased (`en-US`, `zh`), or None when it is not a
    language code this farm knows."""
    tag = tag.strip()
    if not tag or len(tag) > MAX_TAG_CHARS or not tag.isascii():
        return None
    primary, sep, rest = tag.partition("-")
    tag = primary.lower() + sep + rest
    match = _TAG.match(tag)
    if match is None or match.group(1) not in LANGUAGES:
        return None
    return tag
