"""Pure parts of the Vast backend: requirement → query, ranking by total cost, the instance file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.vast_api import parse_ssh_url, resolve_key
from backends.vast_offers import HEADROOM, Requirement, describe, rank
from backends.vast_state import InstanceFile, cost_usd
from daemon.errors import BackendError, BackendUnavailable
from tests.plugins.vastfake import offer


def test_query_names_every_requirement() -> None:
    req = Requirement(min_vram_gb=20, num_gpus=2, disk_gb=80, min_cuda=12.1, min_reliability=0.95,
                      max_dph=1.5)
    q = req.query()
    for part in ("gpu_ram>=20", "num_gpus>=2", "reliability>0.95", "cuda_vers>=12.1",
                 "disk_space>=80", "inet_down>100", "dph_total<=1.5"):
        assert part in q.split()
    assert "dph_total" not in Requirement().query()


def test_rank_by_total_cost_scaled_by_gpu_speed() -> None:
    req = Requirement(min_vram_gb=16, est_hours=10)
    offers = [offer(1, "RTX 3090", 0.30), offer(2, "RTX 4090", 0.40), offer(3, "RTX 3060", 0.10, ram_gb=12)]
    ranked = rank(offers, req)
    # the 4090 costs more per hour but finishes 1.6x sooner: 0.40*13/1.6 = 3.25 < 0.30*13 = 3.90
    assert [o.offer.offer_id for o in ranked] == [2, 1]  # the 12 GB card does not fit
    assert ranked[0].hours == pytest.approx(10 * HEADROOM / 1.6)
    assert ranked[0].total_usd == pytest.approx(0.40 * 10 * HEADROOM / 1.6)


def test_price_cap_and_reliability_are_enforced_locally() -> None:
    req = Requirement(max_dph=0.5, min_reliability=0.95)
    offers = [offer(1, "A100 SXM4", 1.2), offer(2, "RTX 3090", 0.3, rel=0.90), offer(3, "RTX 3090", 0.35, rel=0.96)]
    ranked = rank(offers, req)
    assert [o.offer.offer_id for o in ranked] == [3]
    assert "budget pick" in describe(ranked)  # reliability under 0.97 is flagged (F70)


def test_malformed_offers_are_ignored() -> None:
    assert rank([{"id": "x"}, {"dph_total": "nan", "id": 3}, {}], Requirement()) == []


def test_ssh_url_parsing() -> None:
    assert parse_ssh_url("ssh://root@1.2.3.4:40022") == ("root", "1.2.3.4", 40022)
    with pytest.raises(BackendError):
        parse_ssh_url("")


def test_missing_key_names_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EB_TEST_VAST_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    with pytest.raises(BackendUnavailable, match=r"\$EB_TEST_VAST_KEY or .*missing-key-file"):
        resolve_key("EB_TEST_VAST_KEY", str(tmp_path / "missing-key-file"))
    (tmp_path / "k").write_text("secret-from-file-123\n")
    assert resolve_key("EB_TEST_VAST_KEY", str(tmp_path / "k")) == "secret-from-file-123"


def test_instance_file_keeps_foreign_entries(tmp_path: Path) -> None:
    theirs = {"instance_id": 1, "status": "running", "label": "someone-else", "note": "hand-made"}
    (tmp_path / "vast-instances.json").write_text(json.dumps([theirs]))
    f = InstanceFile(tmp_path)
    f.add({"instance_id": 2, "status": "loading", "label": "expbridge-p-j"})
    f.update(2, status="running")
    rows = json.loads((tmp_path / "vast-instances.json").read_text())
    assert rows[0] == theirs
    assert rows[1]["status"] == "running"
    assert [e["instance_id"] for e in f.ours("expbridge-p")] == [2]


def test_damaged_instance_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "vast-instances.json"
    path.write_text('[\n  {"instance_id": 1,\n')
    f = InstanceFile(tmp_path)
    with pytest.raises(BackendUnavailable, match=r"vast-instances.json:3: not valid JSON"):
        f.add({"instance_id": 2})
    assert path.read_text() == '[\n  {"instance_id": 1,\n'


def test_cost_is_dph_times_wall_hours() -> None:
    entry = {"dph": 0.5, "created_at": "2026-01-01T00:00:00Z", "destroyed_at": "2026-01-01T02:30:00Z"}
    assert cost_usd(entry, now=0) == pytest.approx(1.25)
    running = {"dph": 2.0, "created_at": "2026-01-01T00:00:00Z"}
    from backends.vast_state import parse_iso
    assert cost_usd(running, now=parse_iso("2026-01-01T00:30:00Z") or 0) == pytest.approx(1.0)


def test_registry_builds_vast_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.registry import make_backend
    from daemon.config import ProjectSettings

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("EB_TEST_VAST_KEY", raising=False)
    settings = ProjectSettings(backend="vast", vast={"api_key_env": "EB_TEST_VAST_KEY", "max_dph": 0.8,
                                                     "min_vram_gb": 40, "num_gpus": 2},
                               budget={"usd_max": 10})
    with pytest.raises(BackendUnavailable, match=r"no Vast.ai API key found in \$EB_TEST_VAST_KEY"):
        make_backend("vast", settings, tmp_path, lambda h: None)
    pytest.importorskip("vastai")
    monkeypatch.setenv("EB_TEST_VAST_KEY", "registry-key-123456")
    backend = make_backend("vast", settings, tmp_path, lambda h: None)
    assert backend.name == "vast" and backend.gate.budget.usd_max == 10
    assert (backend.requirement.max_dph, backend.requirement.min_vram_gb, backend.requirement.num_gpus) == (0.8, 40, 2)
    assert backend.api.client.timeout == 30 and backend.auto_destroy


def test_registry_builds_modal_from_settings(tmp_path: Path) -> None:
    pytest.importorskip("modal")
    from backends.registry import make_backend
    from daemon.config import ProjectSettings

    settings = ProjectSettings(backend="modal", modal={"gpu": "A100-80GB", "gpu_fallbacks": ["L40S"],
                                                       "volume": "vol", "secrets": ["wandb-secret"]})
    backend = make_backend("modal", settings, tmp_path / "my proj", lambda h: None)
    assert backend.name == "modal" and backend.gpus == ["A100-80GB", "L40S"]
    assert (backend.timeout_s, backend.volume_name, backend.app_name) == (21600, "vol", "expbridge-my-proj")


def test_a_resolved_key_is_redacted_from_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.log import REDACTED, redact_secrets

    monkeypatch.setenv("EB_TEST_VAST_KEY", "vast-key-to-hide-987654")
    key = resolve_key("EB_TEST_VAST_KEY")
    line = redact_secrets(None, "info", {"event": f"calling with {key}", "detail": {"url": f"x?k={key}"}})
    assert key not in str(line) and REDACTED in line["event"]
