"""The supervisor's children for a worker pool: queue names from core.enums.synth_queue, the
pool in hostnames and heartbeat files; the default pool keeps its plain names."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings
from workers.supervisor import ChildSpec, worker_specs


def _arg(spec: ChildSpec, flag: str) -> str:
    return spec.argv[spec.argv.index(flag) + 1]


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    fields: dict[str, object] = {
        "worker_engines": "piper,tone",
        "gpus": "0,1",
        "device": "cuda",
        "worker_state_dir": tmp_path,
        **overrides,
    }
    return Settings(**fields)  # type: ignore[arg-type]


def test_a_pool_worker_consumes_only_its_pool_queues(tmp_path: Path) -> None:
    specs = worker_specs(_settings(tmp_path, worker_pool="vip"))
    host = socket.gethostname()
    gpu = [s for s in specs if s.name.startswith("gpu")]
    assert [s.name for s in gpu] == ["gpu0.vip", "gpu1.vip"]
    for spec in gpu:
        assert _arg(spec, "-Q").split(",") == [
            "synth.vip.piper",
            "synth.vip.piper.batch",
            "synth.vip.tone",
            "synth.vip.tone.batch",
        ]
        assert spec.env["VOICEFARM_WORKER_POOL"] == "vip"
        assert spec.heartbeat_file == tmp_path.resolve() / f"{spec.name}.heartbeat"
    assert _arg(gpu[0], "-n") == f"gpu0.vip@{host}"
    ops = [s for s in specs if s.name.startswith("ops")]
    assert [s.name for s in ops] == ["ops.vip"]
    assert _arg(ops[0], "-Q") == "webhooks,maintenance,voices"  # shared by every pool


def test_the_default_pool_keeps_plain_names(tmp_path: Path) -> None:
    specs = worker_specs(_settings(tmp_path, supervise_ops_worker=False))
    assert [s.name for s in specs] == ["gpu0", "gpu1"]
    assert _arg(specs[0], "-Q") == "synth.piper,synth.piper.batch,synth.tone,synth.tone.batch"
    assert _arg(specs[1], "-n") == f"gpu1@{socket.gethostname()}"


def test_cpu_workers_carry_the_pool_too(tmp_path: Path) -> None:
    specs = worker_specs(
        _settings(
            tmp_path, device="cpu", cpu_workers=2, worker_pool="b", supervise_ops_worker=False
        )
    )
    assert [s.name for s in specs] == ["cpu0.b", "cpu1.b"]


@pytest.mark.parametrize("name", ["", "Vip", "a.b", "a,b", "x@y", "-lead", "p" * 65])
def test_pool_names_that_would_break_queues_or_hostnames_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="worker_pool"):
        Settings(worker_pool=name)
