"""Entry point the runtime execs: CNI_* env + config on stdin -> result or error JSON on stdout."""

from __future__ import annotations

import os
import sys

from plugin import jsonio, log
from plugin.config import SUPPORTED_VERSIONS, load_json, parse_env, parse_netconf
from plugin.errors import INTERNAL, IO_FAILURE, CNIError

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(jsonio.dumps(obj) + "\n")
    sys.stdout.flush()


def run(environ: dict[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """The whole invocation as a function: (exit code, JSON to print)."""
    version = SUPPORTED_VERSIONS[-1]
    try:
        env = parse_env(environ)
        raw = load_json(stdin) if stdin.strip() or env.command != "VERSION" else {}
        if env.command == "VERSION":
            from plugin.verbs import cmd_version

            return 0, cmd_version(raw.get("cniVersion"))
        conf = parse_netconf(raw)
        version = conf.cni_version
        log.configure(conf.log_file, env.command, env.container_id)
        from plugin import verbs

        if env.command == "ADD":
            return 0, verbs.cmd_add(env, conf, environ)
        handler = {
            "DEL": verbs.cmd_del,
            "CHECK": verbs.cmd_check,
            "GC": verbs.cmd_gc,
            "STATUS": verbs.cmd_status,
        }
        handler[env.command](env, conf, environ)
        return 0, None
    except CNIError as e:
        log.error(f"{e.msg}: {e.details}" if e.details else e.msg)
        return 1, e.to_json(version)
    except OSError as e:
        import traceback

        log.error(f"I/O failure: {e}\n{traceback.format_exc()}")
        return 1, CNIError(IO_FAILURE, "I/O failure", str(e)).to_json(version)
    except Exception as e:  # noqa: BLE001 - the runtime must always get the spec's error JSON
        import traceback

        log.error(f"internal error: {e!r}\n{traceback.format_exc()}")
        return 1, CNIError(INTERNAL, "internal error", repr(e)).to_json(version)


def main(stdin: bytes | None = None) -> int:
    if stdin is None:
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    code, out = run(dict(os.environ), stdin)
    if out is not None:
        _print(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
