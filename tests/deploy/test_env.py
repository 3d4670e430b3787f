"""The deployment's secrets: every NATS user's password is generated and handed to nats-server.

deploy/nats/accounts.conf names each password as ``$CADRE_PW_<USER>``; a user whose
variable is missing makes nats-server refuse to start, so gen-env.sh must write
each one and both compose files must pass each one to every NATS node.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GEN_ENV = ROOT / "deploy" / "scripts" / "gen-env.sh"


def _config_passwords() -> set[str]:
    text = (ROOT / "deploy" / "nats" / "accounts.conf").read_text()
    return set(re.findall(r"^\s*password:\s*\$(CADRE_PW_[A-Z0-9_]+)", text, flags=re.MULTILINE))


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {key: value for key, _, value in (line.partition("=") for line in lines)}


def _gen_env(*args: str) -> str:
    ran = subprocess.run(["bash", str(GEN_ENV), *args], capture_output=True, text=True, check=True)  # noqa: S603, S607
    return ran.stdout


def test_the_config_names_the_operator_and_client_passwords() -> None:
    assert {"CADRE_PW_OPERATOR", "CADRE_PW_CLIENT", "CADRE_PW_MONITOR"} <= _config_passwords()


def test_gen_env_writes_a_token_safe_password_for_every_user_of_the_config(tmp_path: Path) -> None:
    _gen_env(str(tmp_path / ".env"))
    env = _env_file(tmp_path / ".env")
    assert set(env) == _config_passwords()
    # nats-server reads the value as a config token: a letter first, then letters and digits
    assert all(re.fullmatch(r"[a-z][a-z0-9]{20,}", v) for v in env.values()), env
    assert len(set(env.values())) == len(env)
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0  # readable by its owner only


def test_gen_env_adds_a_missing_password_to_an_existing_file_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    _gen_env(str(path))
    before = _env_file(path)
    # a .env written before the operator user existed
    path.write_text("".join(f"{k}={v}\n" for k, v in before.items() if k != "CADRE_PW_OPERATOR"))
    said = _gen_env(str(path))
    after = _env_file(path)
    assert "added CADRE_PW_OPERATOR" in said
    assert {k: v for k, v in after.items() if k != "CADRE_PW_OPERATOR"} == {
        k: v for k, v in before.items() if k != "CADRE_PW_OPERATOR"
    }
    assert after["CADRE_PW_OPERATOR"] and set(after) == _config_passwords()
    assert "keeping it" in _gen_env(str(path)) and _env_file(path) == after


def test_every_nats_node_of_both_compose_files_gets_every_password() -> None:
    main = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    cluster = yaml.safe_load(
        (ROOT / "deploy" / "nats" / "cluster" / "docker-compose.cluster.yml").read_text()
    )
    nodes = {"nats": main["services"]["nats"]["environment"]} | {
        name: svc["environment"] for name, svc in cluster["services"].items()
    }
    for name, env in nodes.items():
        assert _config_passwords() <= set(env), (name, _config_passwords() - set(env))
    # the operator's CLI container logs in as the operator, the client's as the client
    for user in ("operator", "client"):
        env = main["services"][user]["environment"]
        assert env["CADRE_NATS_USER"] == user and env["CADRE_INBOX_PREFIX"] == f"_INBOX_{user}"
        assert f"CADRE_PW_{user.upper()}" in env["CADRE_NATS_PASSWORD"]
