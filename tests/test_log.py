"""log.py: Telegraf's prefixes, and syslog priorities where stderr is the journal."""
import os
import subprocess
import sys

import pytest

PRINT_ALL = "from telegraf_tcpdrop import log; log.error('e'); log.warn('w'); log.info('i'); log.debug('d')"


def test_lines_carry_telegrafs_prefixes_alone_on_a_pipe():
    result = subprocess.run([sys.executable, "-c", PRINT_ALL], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    assert result.stderr == "E! e\nW! w\nI! i\nD! d\n"

@pytest.mark.parametrize("same_stream, expected", [
    (True, "<3>E! e\n<4>W! w\n<6>I! i\n<7>D! d\n"),
    (False, "E! e\nW! w\nI! i\nD! d\n"),  # inherited by a process whose stderr is another
])
def test_lines_carry_syslog_priorities_where_stderr_is_the_journals_stream(tmp_path, same_stream, expected):
    """systemd's JOURNAL_STREAM names the stream by device and inode; a file stands in for it."""
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as f:
        found = os.fstat(f.fileno())
        inode = found.st_ino if same_stream else found.st_ino + 1
        subprocess.run([sys.executable, "-c", PRINT_ALL], stderr=f, check=True,
                       env={**os.environ, "JOURNAL_STREAM": f"{found.st_dev}:{inode}"})
    assert stderr.read_text() == expected
