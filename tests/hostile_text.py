"""Any string a name or a stack could hold (a netns or container name is any
bytes its maker chose), and what line protocol carries of it, as the README
says: a control character as a space, a byte that is not UTF-8 (a lone
surrogate here) as U+FFFD, cut at MAX_NAME (tags) or MAX_STRING (string
fields) characters, and a tag's trailing backslashes left off."""
from hypothesis import strategies as st

from telegraf_tcpdrop.emit import MAX_NAME, MAX_STRING

SPECIAL = ["\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\\", "=", ",", " ", '"', "#",
           "\udcff", "\ud800", "é", "€", "\U0001d11e"]
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=()), max_size=40),  # any code point at all
    st.lists(st.sampled_from(SPECIAL + ["a"]), max_size=16).map("".join),
    st.sampled_from(SPECIAL).map(lambda c: "x" * 65536 + c),  # 64 KiB, and one more
    st.sampled_from(SPECIAL).map(lambda c: c * 65537))
POINTS = st.lists(TEXT, min_size=30, max_size=30)


def shown(text):
    return "".join(" " if ord(c) < 0x20 or c == "\x7f" else "\ufffd" if 0xD800 <= ord(c) < 0xE000
                   else c for c in text)


def as_tag(text):
    """The tag value written; "" when none is (line protocol has no empty tag)."""
    return shown(text[:MAX_NAME]).rstrip("\\")


def as_string(text):
    return shown(text[:MAX_STRING])
