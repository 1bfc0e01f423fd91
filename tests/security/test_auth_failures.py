"""Failed logins are limited per client address before any scrypt runs, and an API key costs one scrypt at most."""

from __future__ import annotations

import re

import grpc
import pytest
import yaml

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security import apikeys
from mmfusion.security.apikeys import add_api_key, generate_api_key, hash_api_key
from mmfusion.security.auth import AuthConfig, AuthenticationError, Caller, TooManyFailures
from mmfusion.security.limits import FailureLimit, RateLimit, TokenBuckets
from mmfusion.serving import build_server
from mmfusion.types import InputError
from tests.security.conftest import Channel, status_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scrypts(monkeypatch) -> list[int]:
    """Counts the scrypt runs of API key checks."""
    calls = []
    real = apikeys._scrypt

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(apikeys, "_scrypt", counting)
    return calls


@pytest.fixture
def bound_keys(tmp_path) -> tuple:
    """A key file of three mmk_ keys (ids a, b, c) and the keys."""
    path = tmp_path / "keys.yaml"
    keys = {key_id: add_api_key(path, key_id, "operator") for key_id in ("a", "b", "c")}
    return path, keys


def _x_api_key(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)]


def test_failure_limit_defaults_and_checks():
    assert FailureLimit() == FailureLimit(20, 60.0)
    assert FailureLimit(20, 60).as_rate_limit() == RateLimit(rate=20 / 60, burst=20)
    with pytest.raises(InputError, match=re.escape("auth failure limit 0: expected a whole number of failures >= 1")):
        FailureLimit(0)
    with pytest.raises(InputError, match=re.escape("auth failure window 0: expected seconds > 0")):
        FailureLimit(5, 0)


def test_buckets_wait_without_taking_and_charge_even_when_empty():
    clock = FakeClock()
    buckets = TokenBuckets(RateLimit(rate=1.0, burst=2), clock)
    assert buckets.wait("a") == 0.0 and buckets.wait("a") == 0.0  # looking takes nothing
    buckets.charge("a")
    buckets.charge("a")
    assert buckets.wait("a") == pytest.approx(1.0)
    buckets.charge("a")  # a racing failure still costs a token
    assert buckets.wait("a") == pytest.approx(2.0)
    clock.now += 2.0
    assert buckets.wait("a") == 0.0 and buckets.wait("b") == 0.0


def test_an_address_over_its_failures_is_refused_before_any_scrypt(bound_keys, scrypts):
    path, keys = bound_keys
    config = AuthConfig(path, failure_limit=FailureLimit(3, 60))
    assert config.authenticate(_x_api_key(keys["a"]), "ipv4:10.0.0.1") == Caller("a", "operator")
    for attempt in range(3):
        with pytest.raises(AuthenticationError):
            config.authenticate(_x_api_key(f"mmk_b_wrong-{attempt}"), "ipv4:10.0.0.1")
    checked = len(scrypts)
    with pytest.raises(TooManyFailures) as refused:
        config.authenticate(_x_api_key("mmk_b_wrong-again"), "ipv4:10.0.0.1")
    assert len(scrypts) == checked  # refused before the expensive check
    assert re.fullmatch(
        r"3 failed authentications per 60 s reached for ipv4:10\.0\.0\.1; retry after \d+ ms", str(refused.value)
    )
    assert 0 < refused.value.retry_ms <= 20_000
    with pytest.raises(TooManyFailures):
        config.authenticate(_x_api_key(keys["b"]), "ipv4:10.0.0.1")  # a key never verified waits too
    assert config.authenticate(_x_api_key(keys["a"]), "ipv4:10.0.0.1") == Caller("a", "operator")  # verified before
    assert len(scrypts) == checked
    assert config.authenticate(_x_api_key(keys["b"]), "ipv4:10.0.0.2") == Caller("b", "operator")  # another address


def test_an_api_key_costs_one_scrypt_at_most(bound_keys, scrypts, tmp_path):
    path, keys = bound_keys
    config = AuthConfig(path)
    assert config.authenticate(_x_api_key(keys["c"])) == Caller("c", "operator")
    assert len(scrypts) == 1  # only c's hash, not a's and b's
    with pytest.raises(AuthenticationError):
        config.authenticate(_x_api_key("mmk_b_not-the-secret"))
    assert len(scrypts) == 2
    with pytest.raises(AuthenticationError):
        config.authenticate(_x_api_key("no-prefix-" + generate_api_key()))  # names no id: no entry to try
    with pytest.raises(AuthenticationError):
        config.authenticate(_x_api_key("mmk_nobody_secret"))
    assert len(scrypts) == 2


def test_key_files_of_plain_keys_keep_working(tmp_path, scrypts):
    old = {f"old-{index}": generate_api_key() for index in range(2)}
    entries = [{"id": key_id, "role": "analyst", "hash": hash_api_key(key)} for key_id, key in old.items()]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}))
    path.chmod(0o600)
    assert entries[0]["hash"].startswith("scrypt$16384$8$1$")
    new = add_api_key(path, "new", "admin")
    assert re.fullmatch(r"mmk_new_[A-Za-z0-9_-]{43}", new)
    assert yaml.safe_load(path.read_text())["keys"][2]["hash"].startswith("scrypt-id$16384$8$1$")
    config = AuthConfig(path)
    assert config.authenticate(_x_api_key(old["old-1"])) == Caller("old-1", "analyst")
    before = len(scrypts)
    assert config.authenticate(_x_api_key(new)) == Caller("new", "admin")
    assert len(scrypts) == before + 1  # the mmk_ key skips the plain entries


def test_add_api_key_refuses_a_taken_id_and_a_bad_one(bound_keys):
    path, _ = bound_keys
    with pytest.raises(InputError, match="api key id 'a': already in"):
        add_api_key(path, "a", "admin")
    with pytest.raises(InputError, match=re.escape("api key id 'has_underscore': expected 1-64 characters")):
        add_api_key(path, "has_underscore", "admin")


def test_a_server_without_rate_limit_refuses_guessing_with_retry_after(bound_keys):
    path, keys = bound_keys
    with build_server([], auth=AuthConfig(path)) as server:  # the default failure limit, no --rate-limit
        channel = Channel(server.port)
        stub = channel.inspection

        def list_models(key: str):
            return status_of(lambda: stub.ListModels(pb.ListModelsRequest(), metadata=_x_api_key(key)))

        assert list_models(keys["a"]) == (grpc.StatusCode.OK, "")
        codes = []  # a slow machine may refill a token while guessing: guess until refused
        while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes and len(codes) < 40:
            codes.append(list_models(f"mmk_a_guess-{len(codes)}")[0])
        assert codes[:20] == [grpc.StatusCode.UNAUTHENTICATED] * 20 and codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListModels(pb.ListModelsRequest(), metadata=_x_api_key(keys["b"]))
        error = refused.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry_ms = int(dict(error.trailing_metadata())["retry-after-ms"])
        assert error.details() == (
            f"20 failed authentications per 60 s reached for ipv4:127.0.0.1; retry after {retry_ms} ms"
        )
        assert list_models(keys["a"]) == (grpc.StatusCode.OK, "")  # a key verified before still passes
        channel.close()


def test_serve_flag_sets_the_failure_limit(security_files, monkeypatch, capsys):
    from mmfusion.cli.main import main
    from mmfusion.serving import server as server_module

    calls = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: calls.append(kwargs) or 0)
    assert main(["serve", "--api-keys", str(security_files["keys"]), "--max-auth-failures", "5"]) == 0
    assert calls[0]["auth"].failure_limit == FailureLimit(5, 60)
    assert main(["serve", "--max-auth-failures", "5"]) == 2
    assert "--max-auth-failures 5: needs --api-keys or a JWT flag" in capsys.readouterr().err
