"""VOICEFARM_ENGINE_CPUS: the CPU list, its split among CPU workers, what the supervisor gives
each child, and the refusals (a malformed list, a CPU this host does not offer, no CPU left)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.process import check_engine_cpus, engine_shares, format_cpus, parse_cpus
from core.settings import Settings
from workers.supervisor import helper_cpus, worker_specs

ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0,2,4-5", [0, 2, 4, 5]), (" 3, 1-2 ,1", [1, 2, 3])],
)
def test_cpu_lists_parse_as_linux_writes_them(text: str, cpus: list[int]) -> None:
    assert parse_cpus(text) == cpus
    assert parse_cpus(format_cpus(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "0,,1", "1.5", "0-99999", "٣"])
def test_malformed_cpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="CPU"):
        parse_cpus(text)


def test_a_malformed_setting_stops_startup_with_its_name() -> None:
    with pytest.raises(ValidationError, match="VOICEFARM_ENGINE_CPUS"):
        Settings(engine_cpus="first two")
    assert Settings(engine_cpus="").engine_cpus is None  # empty: unset


def test_shares_are_contiguous_and_as_even_as_they_go() -> None:
    assert engine_shares([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert engine_shares([4, 5, 6], 3) == [[4], [5], [6]]
    with pytest.raises(ValueError, match="2 CPU workers"):
        engine_shares([0], 2)


def test_cpus_the_host_does_not_offer_or_none_left_are_refused() -> None:
    with pytest.raises(ValueError, match="may not use"):
        check_engine_cpus([max(ALLOWED) + 1])
    with pytest.raises(ValueError, match="leave at least one"):
        check_engine_cpus(ALLOWED)


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs this process may use")
def test_the_supervisor_gives_each_cpu_worker_its_share(tmp_path: Path) -> None:
    def specs(**kw: object) -> list:  # type: ignore[type-arg]
        return worker_specs(
            Settings(worker_state_dir=tmp_path, device="cpu", **kw)  # type: ignore[arg-type]
        )

    engine = ALLOWED[:1]
    rest = ALLOWED[1:]
    children = specs(engine_cpus=format_cpus(engine))
    cpu0 = next(s for s in children if s.name == "cpu0")
    assert cpu0.env["VOICEFARM_ENGINE_CPUS"] == format_cpus(engine)
    assert cpu0.env["VOICEFARM_HELPER_CPUS"] == format_cpus(rest)
    assert helper_cpus(children) == rest  # the supervisor and the ops worker keep to these
    # Unset: nothing pinned, and an inherited VOICEFARM_ENGINE_CPUS is cleared for the child.
    plain = specs()
    assert plain[0].env["VOICEFARM_ENGINE_CPUS"] == "" and helper_cpus(plain) is None
    with pytest.raises(ValueError, match="2 CPU workers"):
        specs(engine_cpus=format_cpus(engine), cpu_workers=2)


def test_gpu_workers_are_not_pinned(tmp_path: Path) -> None:
    children = worker_specs(
        Settings(worker_state_dir=tmp_path, device="cuda", gpus="0,1", engine_cpus="0")
    )
    gpu = [s for s in children if s.name.startswith("gpu")]
    assert [s.env["VOICEFARM_ENGINE_CPUS"] for s in gpu] == ["", ""]
