"""JWT claims: a maximum lifetime, no `iat` in the future, `typ` JWT or at+jwt, and an audience unless opted out."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from mmfusion.security.auth import DEFAULT_MAX_TOKEN_LIFETIME_S, AuthenticationError, Caller, JwtConfig
from mmfusion.types import InputError
from tests.security.conftest import AUDIENCE, ISSUER, JWT_SECRET, token

HOUR = 3600.0


def _config(**options) -> JwtConfig:
    return JwtConfig(JWT_SECRET, audience=AUDIENCE, issuer=ISSUER, **options)


def _refused(config: JwtConfig, value: str) -> str:
    with pytest.raises(AuthenticationError) as failed:
        config.decode(value)
    return failed.value.reason


def test_the_default_maximum_lifetime_is_a_day():
    config = _config()
    assert DEFAULT_MAX_TOKEN_LIFETIME_S == 24 * HOUR
    assert config.decode(token("analyst", lifetime_s=23 * HOUR)) == Caller("alice", "analyst")
    assert _refused(config, token("analyst", lifetime_s=25 * HOUR)).startswith("jwt: lifetime 90000 s")
    assert _refused(config, token("analyst", lifetime_s=10 * 365 * 24 * HOUR)).endswith("the most accepted is 86400 s")


def test_without_iat_the_lifetime_counts_from_now():
    config = _config()
    assert config.decode(token(lifetime_s=HOUR, claims={"iat": None})).role == "admin"
    assert "lifetime" in _refused(config, token(lifetime_s=30 * HOUR, claims={"iat": None}))


def test_an_old_iat_makes_a_long_lived_token_too_long():
    now = time.time()
    long_lived = token(claims={"iat": now - 2 * 24 * HOUR, "exp": now + HOUR})  # issued two days ago
    assert "lifetime" in _refused(_config(), long_lived)


def test_the_maximum_lifetime_is_configurable():
    config = _config(max_lifetime_s=60)
    assert config.decode(token(lifetime_s=50)).role == "admin"
    assert _refused(config, token(lifetime_s=300)) == "jwt: lifetime 300 s; the most accepted is 60 s"
    with pytest.raises(InputError, match=re.escape("jwt max lifetime 0: expected seconds > 0")):
        _config(max_lifetime_s=0)


def test_iat_in_the_future_is_refused():
    assert "iat" in _refused(_config(), token(claims={"iat": time.time() + 600}))


@pytest.mark.parametrize("kind", ["JWT", "jwt", "at+jwt", "application/at+jwt"])
def test_accepted_token_types(kind):
    value = jwt.encode(
        {"sub": "s", "role": "r", "aud": AUDIENCE, "iss": ISSUER, "exp": time.time() + 60},
        JWT_SECRET,
        algorithm="HS256",
        headers={"typ": kind},
    )
    assert _config().decode(value) == Caller("s", "r")


@pytest.mark.parametrize("kind", ["JWE", "id_token", "logout+jwt", "secevent+jwt"])
def test_other_token_types_are_refused(kind):
    value = jwt.encode(
        {"sub": "s", "role": "r", "aud": AUDIENCE, "iss": ISSUER, "exp": time.time() + 60},
        JWT_SECRET,
        algorithm="HS256",
        headers={"typ": kind},
    )
    assert _refused(_config(), value) == f"jwt header typ {kind!r}: expected JWT or at+jwt"


def test_an_audience_is_required_unless_opted_out():
    with pytest.raises(InputError) as refused:
        JwtConfig(JWT_SECRET)
    assert "jwt audience: None; expected the 'aud' claim your tokens carry (--jwt-audience NAME)" in str(refused.value)
    assert "--jwt-no-audience" in str(refused.value)
    open_config = JwtConfig(JWT_SECRET, issuer=ISSUER, require_audience=False)
    assert open_config.decode(token(claims={"aud": None})).role == "admin"
    _refused(open_config, token())  # a token meant for an audience is not taken by a server that names none


def test_serve_needs_an_audience_for_jwt_or_the_explicit_opt_out(monkeypatch, capsys):
    from mmfusion.cli.main import main
    from mmfusion.serving import server as server_module

    calls = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setenv("TEST_JWT_SECRET", JWT_SECRET)
    jwt_flags = ["serve", "--jwt-secret-env", "TEST_JWT_SECRET"]
    assert main(jwt_flags) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--jwt-audience NAME" in error and "--jwt-no-audience" in error
    assert main([*jwt_flags, "--jwt-no-audience", "--jwt-max-lifetime", "600"]) == 0
    assert calls[-1]["auth"].jwt.audience is None and calls[-1]["auth"].jwt.max_lifetime_s == 600
    assert main([*jwt_flags, "--jwt-audience", AUDIENCE]) == 0
    assert calls[-1]["auth"].jwt.max_lifetime_s == DEFAULT_MAX_TOKEN_LIFETIME_S
    assert main([*jwt_flags, "--jwt-audience", AUDIENCE, "--jwt-no-audience"]) == 2
    assert f"--jwt-audience {AUDIENCE} and --jwt-no-audience: give one of them" in capsys.readouterr().err
    assert main(["serve", "--jwt-no-audience"]) == 2
    assert "--jwt-no-audience/--jwt-max-lifetime: need --jwt-secret-env or --jwt-public-key" in capsys.readouterr().err
