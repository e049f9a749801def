"""``agentbook doctor``: the environment checks say what to fix."""

from __future__ import annotations

import os

from agentbook.cli.envcheck import check_environment, format_checks
from agentbook.cli.main import main


def test_every_check_names_what_it_looked_at(tmp_path):
    checks = check_environment(str(tmp_path / "store"))
    names = [c["what"] for c in checks]
    assert names[:6] == ["Python", "ipykernel", "ipywidgets", "a widgets front end",
                         "apsw with SQLite sessions", "store folder writable"]
    assert all(c["ok"] for c in checks if c["required"]), format_checks(checks)


def test_an_old_ipykernel_is_reported_with_the_fix(monkeypatch, tmp_path):
    from agentbook.cli import envcheck

    real = envcheck._version
    monkeypatch.setattr(envcheck, "_version",
                        lambda dist: "7.0.1" if dist == "ipykernel" else real(dist))
    text = format_checks(check_environment(str(tmp_path)))
    assert "FIX   ipykernel: 7.0.1" in text
    assert "pip install 'ipykernel>=7.4'" in text
    assert "1 thing to fix" in text


def test_an_unwritable_store_folder_is_reported(monkeypatch, tmp_path):
    from agentbook.cli import envcheck

    monkeypatch.setattr(envcheck, "_writable", lambda path: False)
    checks = check_environment(str(tmp_path))
    store = next(c for c in checks if c["what"] == "store folder writable")
    assert not store["ok"] and "make" in store["fix"]


def test_the_command_exits_0_when_ready_and_checks_stores_on_request(tmp_path, capsys):
    assert main(["doctor", "--path", str(tmp_path)]) == 0
    assert "agentbook is ready." in capsys.readouterr().out
    assert main(["doctor", "--check-stores", "--path", str(tmp_path / "nope")]) == 2
    assert "no store folder" in capsys.readouterr().err
    os.makedirs(tmp_path / "s" / "agents")
    assert main(["doctor", "--check-stores", "--path", str(tmp_path / "s")]) in (0, 1)
