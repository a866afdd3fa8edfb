"""Secret handling, one rule at a time: key names, URL userinfo, query tokens, storage options,
and the split that keeps a job's secrets out of what Ray records."""

import pytest
import typer

from ltray.cli.console import exit_on_error
from ltray.config import apply_overrides, load_job, validate_job
from ltray.errors import LtrayError
from ltray.fs import credentials_from_url
from ltray.secrets import (
    MASK,
    is_secret_key,
    join_secrets,
    public_url,
    redact,
    redact_url,
    scrub,
    secret_values,
    split_secrets,
    url_credentials,
)

OPTS = {
    "key": "AKIAEXAMPLEKEY",
    "secret": "s3cr3t-value",
    "client_kwargs": {"endpoint_url": "http://h:1"},
}


@pytest.mark.parametrize(
    "key",
    [
        "key",
        "secret",
        "aws_secret_access_key",
        "api_token",
        "password",
        "Authorization",
        "sas_token",
        "connection_string",
    ],
)
def test_secret_looking_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["url", "endpoint_url", "client_kwargs", "region_name", "margin"])
def test_ordinary_keys(key):
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host/p", "https://***@host/p"),
        ("s3://AKIA:se/cr+et@bucket/ds", "s3://***@bucket/ds"),
        # an unencoded '@' in the password: all of the userinfo goes, not only its first part
        ("http://user:p@ss@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("https://tok3n@host/x", "https://***@host/x"),
        ("s3://bucket/ds", "s3://bucket/ds"),
        ("s3://bucket/a@b.parquet", "s3://bucket/a@b.parquet"),  # '@' in the path
    ],
)
def test_redact_url_masks_userinfo(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h/f?token=abc123&x=1", "https://h/f?token=***&x=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=dead"
            "&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"
            "&X-Amz-Expires=60",
        ),
        ("https://acct.blob.core.windows.net/c/f?sv=2024&sp=r&sig=Zm9v%3D", None),
        (
            "https://h/f?access_token=t0k&api_key=k3y#frag",
            "https://h/f?access_token=***&api_key=***#frag",
        ),
        ("https://h/f?page=2&design=x", "https://h/f?page=2&design=x"),
    ],
)
def test_redact_url_masks_secret_query_values(url, shown):
    if shown is None:  # Azure SAS: only sig is the secret
        shown = "https://acct.blob.core.windows.net/c/f?sv=2024&sp=r&sig=***"
    assert redact_url(url) == shown


def test_public_url_drops_userinfo_and_secret_params():
    assert public_url("http://u:pw@127.0.0.1:5000/mlflow") == "http://127.0.0.1:5000/mlflow"
    assert public_url("https://h/f?token=t&x=1&sig=s#a") == "https://h/f?x=1#a"
    assert public_url("https://h/f?token=t") == "https://h/f"
    assert public_url("./data/cifar") == "./data/cifar"


def test_url_credentials_are_percent_decoded():
    assert url_credentials("http://alice:p%40ss%2Fw@h:1") == ("alice", "p@ss/w")
    assert url_credentials("https://tok@h") == ("tok", None)
    assert url_credentials("http://h:1") == (None, None)


def test_secret_values_finds_option_values_and_url_secrets_at_any_depth():
    job = {
        "data": {"url": "s3://AK:url-secret@b/ds", "storage_options": OPTS},
        "storage": {"url": "https://h/r?token=tok-value"},
        "tracking": {"uri": "http://u:pw%2Bx@h:1"},
    }
    found = set(secret_values(job))
    assert {"url-secret", "AKIAEXAMPLEKEY", "s3cr3t-value", "tok-value", "pw+x", "pw%2Bx"} <= found
    assert "http://h:1" not in found and "b/ds" not in found


def test_scrub_removes_secrets_and_url_passwords():
    text = "failed s3://AKIAEXAMPLEKEY:s3cr3t-value@bucket/x with key AKIAEXAMPLEKEY"
    out = scrub(text, OPTS)
    assert "AKIAEXAMPLEKEY" not in out and "s3cr3t-value" not in out
    assert "http://h:1" in scrub("endpoint http://h:1", OPTS)  # not a secret


def test_scrub_removes_percent_encoded_spellings():
    options = {"secret": "a/b+c=d"}
    out = scrub("signed with a%2Fb%2Bc%3Dd and a%2Fb%2Bc%3Dd", options)
    assert "a%2Fb" not in out and out.count(MASK) == 2


def test_scrub_with_a_job_dump_removes_a_url_password_quoted_elsewhere():
    job = {"tracking": {"uri": "http://u:hunter22@h:1"}}
    assert scrub("401 for password hunter22", job) == f"401 for password {MASK}"


def test_redact_hides_secrets_and_storage_options():
    raw = {
        "data": {"url": "s3://b", "storage_options": {"key": "AKIA", "secret": "s"}},
        "tracking": {"api_token": "t", "uri": "http://x"},
        "storage": {"url": "s3://K:S3CRET@b/runs"},
    }
    out = redact(raw)
    assert out["data"]["storage_options"] == MASK and out["tracking"]["api_token"] == MASK
    assert out["tracking"]["uri"] == "http://x" and "AKIA" not in str(out)
    assert out["storage"]["url"] == "s3://***@b/runs"


def test_split_secrets_masks_and_join_restores():
    job = {
        "data": {"url": "s3://K:S3CRET@b/ds", "storage_options": OPTS, "image_size": 32},
        "tracking": {"uri": "http://u:pw@h:1", "experiment": "e"},
        "schedule": {"milestones": [1, 2]},
    }
    public, secrets = split_secrets(job)
    for value in ("S3CRET", "AKIAEXAMPLEKEY", "s3cr3t-value", "pw"):
        assert value not in str(public)
    assert public["data"]["image_size"] == 32 and public["tracking"]["experiment"] == "e"
    assert public == redact(job)
    assert join_secrets(public, secrets) == job


# --- where ltray uses the rules ------------------------------------------------------------


def _job(**data):
    return {"name": "j", "data": {"url": "s3://bucket/ds", **data}}


def test_new_credentials_for_the_same_data_set_keep_the_run_name():
    first = validate_job(_job(url="s3://AK1:old-secret@bucket/ds")).run_name()
    rotated = validate_job(_job(url="s3://AK2:new-secret@bucket/ds")).run_name()
    assert first == rotated == validate_job(_job()).run_name()


def test_a_bad_value_under_a_secret_key_is_not_echoed():
    with pytest.raises(LtrayError) as info:
        validate_job(_job(storage_options="key=AKIA,secret=hunter22"))
    assert "data.storage_options" in str(info.value) and "hunter22" not in str(info.value)


def test_a_bad_url_value_is_echoed_without_its_password():
    with pytest.raises(LtrayError) as info:
        validate_job({**_job(), "tracking": {"uri": ["http://u:hunter22@h"]}})
    assert "tracking.uri" in str(info.value) and "hunter22" not in str(info.value)


def test_credentials_in_the_artifact_location_are_refused():
    with pytest.raises(LtrayError, match="tracking.artifact_location: holds credentials"):
        validate_job({**_job(), "tracking": {"artifact_location": "s3://AK:hunter22@b/a"}})


def load_job_from(raw, overrides):
    return validate_job(apply_overrides(raw, overrides))


def test_set_with_bad_yaml_does_not_echo_a_secret_value():
    with pytest.raises(LtrayError) as info:
        load_job_from({}, ["data.storage_options.secret=[hunter22"])
    assert "hunter22" not in str(info.value) and "data.storage_options.secret" in str(info.value)


def test_bad_yaml_is_named_by_line_without_quoting_it(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ndata:\n  storage_options: {secret: hunter22\n")
    with pytest.raises(LtrayError, match=r"not valid YAML at line \d") as info:
        load_job(path)
    assert "hunter22" not in str(info.value)


def test_cli_error_line_is_scrubbed_with_the_jobs_secrets(capsys):
    job = {"data": {"storage_options": {"token": "opt-token-123"}}, "tracking": {"uri": "x"}}
    with pytest.raises(typer.Exit), exit_on_error(job):
        raise LtrayError("upload refused for token opt-token-123")
    assert capsys.readouterr().err == f"error: upload refused for token {MASK}\n"


def test_s3_userinfo_becomes_key_and_secret_and_explicit_options_win():
    url, options = credentials_from_url("s3://AKIA:se/cr%2Bet@bucket/ds", {"region": "r"})
    assert url == "s3://bucket/ds" and options == {
        "region": "r",
        "key": "AKIA",
        "secret": "se/cr+et",
    }
    _, options = credentials_from_url("s3://AKIA:url@bucket/ds", {"secret": "opt"})
    assert options == {"key": "AKIA", "secret": "opt"}
    assert credentials_from_url("https://u:p@h/ds", None) == ("https://u:p@h/ds", {})


def test_the_secret_search_of_the_end_to_end_tests_finds_what_it_must(tmp_path):
    """tests/file_search.files_holding, which the end-to-end secret checks trust to find a
    leak: every spelling, in nested folders, through a link only when asked."""
    from file_search import files_holding

    (tmp_path / "run" / "deep").mkdir(parents=True)
    (tmp_path / "run" / "deep" / "params.json").write_bytes(b'{"uri": "http://u:pa%2Fss@h"}')
    (tmp_path / "run" / "clean.txt").write_bytes(b"nothing here")
    (tmp_path / "ray-logs").mkdir()
    (tmp_path / "ray-logs" / "worker.out").write_bytes(b"Authorization: Basic dTpwYS9zcw==")
    (tmp_path / "run" / "ray").symlink_to(tmp_path / "ray-logs")
    needles = {"password": [b"pa/ss", b"pa%2Fss"], "header": [b"dTpwYS9zcw=="]}

    assert files_holding(tmp_path / "run", needles) == {
        str(tmp_path / "run" / "deep" / "params.json"): ["password"]
    }
    assert files_holding(tmp_path / "run", needles, follow_links=True) == {
        str(tmp_path / "run" / "deep" / "params.json"): ["password"],
        str(tmp_path / "run" / "ray" / "worker.out"): ["header"],
    }
