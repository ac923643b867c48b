"""api/serve.py's options reach uvicorn as its own CLI would pass them, and its sockets share a
port only with each other (the processes themselves: tests/e2e/test_api_workers.py)."""

from __future__ import annotations

import socket

import pytest

from api.serve import bound_socket, config_kwargs, parse
from core.settings import get_settings


def test_defaults_follow_the_settings_and_uvicorn() -> None:
    settings = get_settings()
    options = parse([])
    assert (options.host, options.port, options.workers) == (
        settings.api_host,
        settings.api_port,
        settings.api_workers,
    )
    kwargs = config_kwargs(options)
    assert kwargs["app"] == "api.main:app"
    assert kwargs["proxy_headers"] is True  # uvicorn's default, trusted from 127.0.0.1 only
    assert kwargs["forwarded_allow_ips"] is None  # uvicorn then reads $FORWARDED_ALLOW_IPS
    assert kwargs["access_log"] is True


def test_proxy_and_logging_options_pass_through() -> None:
    options = parse(
        ["--forwarded-allow-ips", "10.0.0.7", "--no-access-log", "--log-level", "warning"]
    )
    kwargs = config_kwargs(options)
    assert kwargs["forwarded_allow_ips"] == "10.0.0.7"
    assert kwargs["access_log"] is False
    assert kwargs["log_level"] == "warning"
    assert config_kwargs(parse(["--no-proxy-headers"]))["proxy_headers"] is False


def test_zero_workers_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_reuse_port_sockets_share_a_port_and_plain_ones_do_not() -> None:
    holder = bound_socket("127.0.0.1", 0, reuse_port=True)
    port = holder.getsockname()[1]
    a = bound_socket("127.0.0.1", port, reuse_port=True)
    b = bound_socket("127.0.0.1", port, reuse_port=True)
    try:
        a.listen(16)
        b.listen(16)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with pytest.raises(OSError):  # another program (or api.serve's start check) is refused
            bound_socket("127.0.0.1", port, reuse_port=False)
    finally:
        for s in (a, b, holder):
            s.close()
