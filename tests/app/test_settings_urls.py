"""Settings that take a URL refuse what is not one at start-up, naming the setting (and, for a list given
where one URL goes, the setting that takes several)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.settings import RedisSettings, VllmSettings, settings_problem

LIST = "http://a:8001/v1,http://b:8001/v1,http://c:8001/v1"


def problem(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        VllmSettings.model_validate(fields)
    return settings_problem(caught.value)


def test_a_list_given_for_one_upstream_names_the_setting_that_takes_several() -> None:
    message = problem(upstream=LIST)
    assert "TWICE_VLLM__UPSTREAM (--upstream) takes one URL" in message
    assert "TWICE_VLLM__UPSTREAMS (--upstreams)" in message


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1:8001",
        "ftp://host:8001",
        "http://",
        "http://host:99999",
        "http://host:8001/v1?x=1",
        "http ://h",
    ],
)
def test_what_is_not_a_base_url_is_refused(bad: str) -> None:
    assert "TWICE_VLLM__UPSTREAM" in problem(upstream=bad)


def test_good_urls_pass_and_a_list_goes_to_upstreams() -> None:
    assert VllmSettings(upstream="https://vllm.internal:8001/v1").upstream == "https://vllm.internal:8001/v1"
    assert VllmSettings.model_validate({"upstreams": LIST}).upstreams == LIST.split(",")
    assert "each of TWICE_VLLM__UPSTREAMS" in problem(upstreams="http://a:8001,b:8001")


def test_a_bad_redis_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(ValidationError) as caught:
        RedisSettings.model_validate({"url": "http://:hunter2@cache:6379/0"})
    assert "TWICE_REDIS__URL" in settings_problem(caught.value)
    assert "hunter2" not in str(caught.value)
    assert RedisSettings.model_validate({"url": "rediss://:pw@cache:6380/1"}).url.get_secret_value()


def test_twice_serve_exits_with_the_message_and_no_traceback() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--backend", "vllm", "--upstream", LIST],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "TWICE_VLLM__UPSTREAMS (--upstreams)" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("bad", ["https://vllm:8000", "vllm/v1:8000", "vllm:0", "vllm", "vllm:http"])
def test_a_dns_target_that_is_not_host_and_port_is_refused_at_start_up(bad: str) -> None:
    assert "vllm.upstreams_dns must be host:port" in problem(upstreams_dns=bad)


def test_a_dns_target_of_host_and_port_is_kept_as_given() -> None:
    assert (
        VllmSettings.model_validate({"upstreams_dns": "vllm-headless:8000"}).upstreams_dns
        == "vllm-headless:8000"
    )
