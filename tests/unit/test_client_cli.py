"""plada-client as a user runs it: import, cache ls/prune, offline training, --json, --help everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plada.client.cli import build_parser
from plada.shared.payload import Payload, encode_payload
from plada.shared.pool import Pool, write_array_pool


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plada.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | (env or {}),
    )


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Pool, Path]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 12, 12), dtype=np.uint8)
    pool = write_array_pool(tmp_path / "pool", "tiny", x, [f"k{i}" for i in range(300)])
    p = Payload(
        indices=np.arange(0, 300, 3),
        labels=rng.integers(0, 3, 100),
        classes=("a", "b", "c"),
        pool_id=pool.pool_id,
        n_pool=300,
        task="tiny-task",
        version=4,
        pool_name="tiny",
    )
    path = tmp_path / "tiny-task-v4.plada"
    path.write_bytes(encode_payload(p))
    return pool, path


def test_import_then_train_offline_then_prune(tiny: tuple[Pool, Path], tmp_path: Path) -> None:
    pool, path = tiny
    env = {"PLADA_CACHE": str(tmp_path / "cache")}
    r = run("import", str(path), "--pool", str(pool.root), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) | {"cache": ""} == {
        "task": "tiny-task",
        "version": 4,
        "n_items": 100,
        "sha256": json.loads(r.stdout)["sha256"],
        "pool_checked": True,
        "cache": "",
    }
    rows = json.loads(run("cache", "ls", "--json", env=env).stdout)
    assert [(r["task"], r["version"], r["ok"]) for r in rows] == [("tiny-task", 4, True)]
    human = run("cache", "ls", env=env).stdout
    assert human.splitlines()[0].split()[:3] == ["task", "version", "bytes"] and "tiny-task" in human

    off = env | {"PLADA_OFFLINE": "1"}
    r = run(
        "train",
        "--task",
        "tiny-task",
        "--pool",
        str(pool.root),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--server",
        "http://127.0.0.1:9",
        "--json",
        env=off,
    )
    assert r.returncode == 0, r.stderr
    assert "offline (PLADA_OFFLINE=1): training from cached payload tiny-task v4" in r.stderr
    assert json.loads(r.stdout)["n_items"] == 100
    r = run("train", "--task", "missing", "--pool", str(pool.root), "--out", str(tmp_path / "run2"), env=off)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "offline_cache_miss" in r.stderr
    assert not (tmp_path / "run2").exists()

    r = run("cache", "prune", "--all", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["removed"] >= 3
    assert json.loads(run("cache", "ls", "--json", env=env).stdout) == []


def test_import_refuses_damaged_or_foreign_payloads(tiny: tuple[Pool, Path], tmp_path: Path) -> None:
    _pool, path = tiny
    env = {"PLADA_CACHE": str(tmp_path / "cache")}
    bad = tmp_path / "bad.plada"
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    bad.write_bytes(bytes(data))
    r = run("import", str(bad), env=env)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "payload_corrupt" in r.stderr
    other = write_array_pool(
        tmp_path / "other", "other", np.zeros((300, 12, 12), np.uint8), [f"o{i}" for i in range(300)]
    )
    r = run("import", str(path), "--pool", str(other.root), env=env)
    assert r.returncode == 1 and "pool_mismatch" in r.stderr
    assert not (tmp_path / "cache" / "payloads").exists() or not list((tmp_path / "cache" / "payloads").iterdir())


def test_every_command_has_help_with_an_example() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():  # type: ignore[attr-defined]
        text = p.format_help()
        assert "--json" in text, name
        if name != "cache":
            assert "example:" in text, name
    assert "exit status" in parser.format_help()


def test_every_server_command_has_an_example() -> None:
    from plada.server.cli import SUB_EXAMPLES
    from plada.server.cli import build_parser as server_parser

    seen = []

    def walk(p: object, prefix: str) -> None:
        for a in p._actions:  # type: ignore[attr-defined]
            if a.__class__.__name__ == "_SubParsersAction":
                for name, sub in a.choices.items():
                    if not any(x.__class__.__name__ == "_SubParsersAction" for x in sub._actions):
                        seen.append(f"{prefix}{name}")
                        assert "example:" in sub.format_help(), f"{prefix}{name}"
                    walk(sub, f"{prefix}{name} ")

    walk(server_parser(), "")
    assert sorted(seen) == sorted(SUB_EXAMPLES)


def test_spec_is_inline_json_of_any_length_a_file_or_at_file(tmp_path: Path) -> None:
    from plada.client.cli import read_spec
    from plada.shared.errors import InvalidSpecError

    spec = {"name": "t", "classes": [f"class number {i}" for i in range(40)], "pool_id": "mini-v1"}
    inline = json.dumps(spec)
    assert len(inline) > 255 and read_spec(inline) == spec  # no 'File name too long'
    (tmp_path / "s.json").write_text(inline)
    assert read_spec(str(tmp_path / "s.json")) == spec == read_spec(f"@{tmp_path / 's.json'}")
    with pytest.raises(InvalidSpecError, match="is not valid JSON"):
        read_spec('{"name": ')
    with pytest.raises(InvalidSpecError, match="neither inline JSON nor a readable file"):
        read_spec(str(tmp_path / "missing.json"))
    r = run("publish", "--server", "http://127.0.0.1:9", "--spec", '{"name": ' + "x" * 400, "--data", "d.npz")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not valid JSON" in r.stderr, r.stderr


def test_both_clis_share_output_and_errors(tiny: tuple[Pool, Path], tmp_path: Path) -> None:
    """--json before or after the subcommand on both commands; readable output otherwise; the same one-line
    error shape (plada.shared.cli)."""
    server = [sys.executable, "-m", "plada.server.cli"]
    data = ["--data-dir", str(tmp_path / "srv")]

    def srv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*server, *args], capture_output=True, text=True, timeout=120)

    assert srv("pool", "list", *data).stdout.strip() == "(none)"
    assert json.loads(srv("--json", "pool", "list", *data).stdout) == []
    assert json.loads(srv("pool", "list", "--json", *data).stdout) == []
    current = srv("db", "current", *data).stdout
    assert current.startswith("current: ") and "head: " in current
    bad = srv("token", "revoke", "99", *data)
    assert (
        bad.returncode == 1
        and bad.stderr.strip().splitlines()[-1] == "plada-server: error: plada_error: no token with id 99"
    )
    _, payload = tiny
    readable = run("inspect", str(payload)).stdout
    assert (
        "task: tiny-task" in readable
        and json.loads(run("inspect", str(payload), "--json").stdout)["task"] == "tiny-task"
    )
    missing = run("inspect", str(tmp_path / "nope.plada"))
    assert missing.returncode == 1 and missing.stderr.startswith("plada-client: error: payload_invalid: cannot read")


def test_training_from_a_file_checks_its_signature_when_a_key_is_pinned(
    tiny: tuple[Pool, Path], tmp_path: Path
) -> None:
    """The same rule as import: with a pinned key, a payload file without a verifying FILE.sig is refused
    (plada.client.load.open_payload_file), before any training starts or any file is written."""
    from plada.shared.signing import load_or_create_key

    pool, payload = tiny
    key = load_or_create_key(tmp_path / "signing.key").public.text
    out = tmp_path / "run"
    r = run("train", "--payload", str(payload), "--pool", str(pool.root), "--out", str(out), "--trust", key)
    assert r.returncode == 1 and "signature" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_human_output_shows_times_as_iso_8601(capsys: pytest.CaptureFixture[str]) -> None:
    from plada.shared.cli import Output

    Output().emit([{"id": 1, "last_used_at": 1797000000.0, "created_at": None}])
    Output().emit({"history": [{"at": 1797000000, "action": "created"}]})
    out = capsys.readouterr().out
    assert "2026-12-11T14:40:00Z" in out and "1.797e+09" not in out
    Output(as_json=True).emit({"at": 1797000000})
    assert '"at": 1797000000' in capsys.readouterr().out  # --json keeps the number


def test_a_progress_bar_on_a_terminal_shows_its_message_without_a_stray_comma(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from plada.shared.cli import progress_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    bar = progress_bar("training")
    bar(0.3, "epoch 7/30 loss {0.300}")
    bar(1.0, "done")
    text = err.getvalue()
    assert "| epoch 7/30 loss {0.300}" in text and "| ," not in text, text
