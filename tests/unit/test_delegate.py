"""plugin.delegate.run: the child process runner delegated IPAM uses instead of subprocess."""

from __future__ import annotations

import pytest

from plugin import errors
from plugin.delegate import exec_plugin, run


def test_stdin_stdout_stderr_and_exit_code():
    code, out, err = run("/bin/sh", b"echo out; echo err >&2; exit 3\n", {"PATH": "/bin"}, 10)
    assert (code, out, err) == (3, b"out\n", b"err\n")


def test_large_input_and_output_do_not_deadlock():
    data = bytes(range(256)) * 8192  # 2 MiB each way, far past a pipe's buffer
    code, out, _ = run("/bin/cat", data, {}, 30)
    assert code == 0 and out == data


def test_a_child_that_ignores_stdin_still_answers():
    code, out, _ = run("/bin/true", b"x" * 1_000_000, {}, 10)
    assert (code, out) == (0, b"")


def test_environment_is_the_childs():
    code, out, _ = run("/usr/bin/env", b"", {"CNI_COMMAND": "ADD", "K": "v\udcff"}, 10)
    assert code == 0 and sorted(out.split(b"\n")) == [b"", b"CNI_COMMAND=ADD", b"K=v\xff"]


def test_timeout_kills_the_child():
    with pytest.raises(TimeoutError):
        run("/bin/sh", b"exec sleep 30\n", {}, 0.3)


def test_an_ipam_plugin_that_cannot_run_is_code_5(tmp_path):
    plugin = tmp_path / "broken-ipam"
    plugin.write_text("#!/nonexistent/interpreter\n")
    plugin.chmod(0o755)
    with pytest.raises(errors.CNIError) as e:
        exec_plugin("broken-ipam", "ADD", {"cniVersion": "1.0.0"}, {}, (str(tmp_path),))
    assert e.value.code == errors.IO_FAILURE


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("echo '{not json'", errors.DECODE_FAILURE),
        ("echo '[1]'", errors.DECODE_FAILURE),
        ('echo \'{"code": "x", "msg": "m"}\'; exit 1', errors.IO_FAILURE),
        ('echo \'{"code": 11, "msg": "busy"}\'; exit 1', errors.TRY_AGAIN_LATER),
    ],
)
def test_what_an_ipam_plugin_answers_becomes_a_spec_error(tmp_path, script, code):
    plugin = tmp_path / "fake-ipam"
    plugin.write_text(f"#!/bin/sh\ncat >/dev/null\n{script}\n")
    plugin.chmod(0o755)
    with pytest.raises(errors.CNIError) as e:
        exec_plugin("fake-ipam", "ADD", {"cniVersion": "1.0.0"}, {}, (str(tmp_path),))
    assert e.value.code == code
