"""api/serve.py's options reach uvicorn as its own CLI would pass them (the processes
themselves are tested in tests/e2e/test_api_workers.py)."""

from __future__ import annotations

import socket

import pytest

from api.serve import _config, listening_socket, parse


def test_defaults_follow_the_settings_and_uvicorn() -> None:
    options = parse([])
    config = _config(options)
    assert (options.host, options.port, options.workers) == ("127.0.0.1", 8000, 2)
    assert config.proxy_headers is True  # uvicorn's default, trusted from 127.0.0.1 only
    assert config.access_log is True


def test_proxy_and_logging_options_pass_through() -> None:
    options = parse(
        ["--forwarded-allow-ips", "10.0.0.7", "--no-access-log", "--log-level", "warning"]
    )
    config = _config(options)
    assert config.forwarded_allow_ips == "10.0.0.7"
    assert config.access_log is False
    assert config.log_level == "warning"
    assert _config(parse(["--no-proxy-headers"])).proxy_headers is False


def test_zero_workers_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_reuse_port_sockets_share_a_port_and_plain_ones_do_not() -> None:
    holder = listening_socket("127.0.0.1", 0, None, reuse_port=True)
    port = holder.getsockname()[1]
    try:
        a = listening_socket("127.0.0.1", port, 16, reuse_port=True)
        b = listening_socket("127.0.0.1", port, 16, reuse_port=True)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with pytest.raises(OSError):  # another program's socket cannot join the group
            listening_socket("127.0.0.1", port, 16, reuse_port=False)
        a.close()
        b.close()
    finally:
        holder.close()
