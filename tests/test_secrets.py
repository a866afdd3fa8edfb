"""Secret handling: key names, URL userinfo, storage options."""

from ltray.secrets import redact, redact_url, scrub

OPTS = {
    "key": "AKIAEXAMPLEKEY",
    "secret": "s3cr3t-value",
    "client_kwargs": {"endpoint_url": "http://h:1"},
}


def test_scrub_removes_secrets_and_url_passwords():
    text = "failed s3://AKIAEXAMPLEKEY:s3cr3t-value@bucket/x with key AKIAEXAMPLEKEY"
    out = scrub(text, OPTS)
    assert "AKIAEXAMPLEKEY" not in out and "s3cr3t-value" not in out
    assert "http://h:1" in scrub("endpoint http://h:1", OPTS)  # not a secret
    assert redact_url("https://user:pw@host/p") == "https://***@host/p"


def test_redact_hides_secrets_and_storage_options():
    raw = {
        "data": {"url": "s3://b", "storage_options": {"key": "AKIA", "secret": "s"}},
        "tracking": {"api_token": "t", "uri": "http://x"},
    }
    out = redact(raw)
    assert out["data"]["storage_options"] == "***" and out["tracking"]["api_token"] == "***"
    assert out["tracking"]["uri"] == "http://x" and "AKIA" not in str(out)
