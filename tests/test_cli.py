"""The ``ltray`` command's edge: one ``error: ...`` line and exit status 1 on bad input."""

from typer.testing import CliRunner

from ltray.cli import app


def test_train_with_a_config_typo_prints_one_error_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ndata: {url: ./d}\n")
    result = CliRunner().invoke(app, ["train", str(job), "--set", "loss.margn=0.3"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {job}: loss.margn: unknown key (did you mean 'margin'?)"
    ]


def test_demo_without_its_job_file_says_where_to_run_it(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--job", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "run `ltray demo` from the ltray checkout" in result.stderr
