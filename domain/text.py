import unicodedata

from domain.errors import Code, InputError

_LINE_CONTROLS = frozenset("\n\t")
# Overrides show the characters after them reversed: "moc.elgoog" drawn as a trusted link.
BIDI_OVERRIDES = frozenset("\u202d\u202e")
# In a name, embeddings and isolates too let it render as something else (a classic spoofing
# trick); other format characters (zero-width joiners in emoji, for example) are legitimate.
_BIDI_CONTROLS = BIDI_OVERRIDES | frozenset("\u202a\u202b\u202c\u2066\u2067\u2068\u2069")


def has_lone_surrogate(value: str) -> bool:
    # Every request's query text and variables pass here: checked in C, not a character at a time.
    # Surrogates are the only code points that strict UTF-8 cannot encode.
    if value.isascii():
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def clean_text(
    value: str, field: str, *, max_len: int, min_len: int = 0, multiline: bool = False
) -> str:
    # A lone surrogate passes most checks and then fails at the first UTF-8 encode (the database
    # driver), so it is refused here, before anything is stored.
    if has_lone_surrogate(value):
        raise InputError(Code.INVALID_TEXT, f"{field} contains an unpaired UTF-16 surrogate", field)
    # Cheap bound before normalising, so a megabyte of text is not normalised only to be refused.
    if len(value) > max_len * 4:
        raise InputError(Code.TEXT_TOO_LONG, f"{field} is longer than {max_len} characters", field)
    # Windows line ends are line ends too.
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n") if multiline else value).strip()
    for ch in text:
        category = unicodedata.category(ch)
        forbidden = category in ("Cc", "Co", "Cn") or ch in _BIDI_CONTROLS
        if forbidden and not (multiline and ch in _LINE_CONTROLS):
            raise InputError(Code.INVALID_TEXT, f"{field} contains a control character", field)
    if len(text) > max_len:
        raise InputError(Code.TEXT_TOO_LONG, f"{field} is longer than {max_len} characters", field)
    if len(text) < min_len:
        raise InputError(Code.TEXT_TOO_SHORT, f"{field} must be at least {min_len} characters", field)
    return text


def visible(text: str) -> bool:
    """Whether anything in it would show: a name of zero-width characters alone shows nothing."""
    return any(unicodedata.category(ch)[0] not in ("C", "Z") for ch in text)
