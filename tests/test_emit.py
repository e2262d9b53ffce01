"""Line protocol, byte for byte. (Telegraf's own parser reads these back in test_telegraf.py.)"""
import io

from telegraf_tcpdrop.emit import Point, TagSet, encode
from telegraf_tcpdrop.stdout_output import StdoutOutput

# Every character line protocol treats specially, in every place it can stand.
ODD = Point("tcp drop,x", {"frame": "a b,c=d\\e", "z key": "v", "empty": "", "a=b": "x\ny"},
            {"drops": 3, "f,x": 1.5, "ok": True, "stack": 'say "hi"\\now', "n=1": -2}, 1700000000000000000)
ODD_LINE = ('tcp\\ drop\\,x,a\\=b=x\\ y,frame=a\\ b\\,c\\=d\\e,z\\ key=v '
            'drops=3i,f\\,x=1.5,ok=true,stack="say \\"hi\\"\\\\now",n\\=1=-2i 1700000000000000000')


def test_a_point_is_one_line_with_its_tags_sorted_and_ints_marked():
    point = Point("tcpdrop", {"reason": "NO_SOCKET", "state": "NONE", "sport": "ephemeral",
                              "dport": "443", "family": "4", "flags": "SYN", "frame": "tcp_v4_rcv"},
                  {"drops": 3, "bytes": 180}, 1795463949475646894)
    assert encode(point) == ("tcpdrop,dport=443,family=4,flags=SYN,frame=tcp_v4_rcv,reason=NO_SOCKET,"
                             "sport=ephemeral,state=NONE drops=3i,bytes=180i 1795463949475646894")


def test_escaping_of_every_special_character():
    assert encode(ODD) == ODD_LINE


def test_a_tag_set_encodes_as_its_tags_do_every_time():
    tagged = ODD._replace(tags=TagSet(ODD.tags))
    assert encode(tagged) == encode(tagged) == ODD_LINE


def test_a_trailing_backslash_is_trimmed_so_that_it_escapes_no_separator():
    point = Point("m\\", {"a": "x\\", "b": "\\\\", "c": "y\\,z"}, {"f\\": 1}, 1)
    assert encode(point) == "m,a=x,c=y\\\\,z f=1i 1"  # b, only backslashes, is left out


def test_control_characters_become_spaces_and_bytes_that_are_not_utf8_the_replacement_character():
    """A name is any bytes (`ip netns add $'a\\tb\\xff'`), read with
    surrogateescape: the line is still one line of valid UTF-8."""
    name = b"a\tb\xff\x00c\x7f".decode("utf-8", "surrogateescape")
    line = encode(Point("m", {"netns": name}, {"stack": name}, 1))
    assert line == 'm,netns=a\\ b\ufffd\\ c\\  stack="a b\ufffd c " 1'
    assert line.encode("utf-8")  # strict: no surrogate is left


def test_stdout_output_writes_every_line_in_slices_and_flushes_once():
    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            self.flushes += 1
    stream = Stream()
    out = StdoutOutput(stream)
    out.write([ODD, ODD])
    out.write([])
    assert stream.getvalue() == ODD_LINE + "\n" + ODD_LINE + "\n"
    assert stream.flushes == 1
    out.write([ODD] * 2500)  # encoded and written in slices
    assert stream.getvalue() == (ODD_LINE + "\n") * 2502
    assert stream.flushes == 2
