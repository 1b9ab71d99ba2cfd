"""While the model loads the server answers 503 in the OpenAI error schema; a failed load is reported."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.serve.helpers import free_port, http

pytest.importorskip("fastapi")


def _run(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{server.config.port}"


def test_503_while_loading_then_ready(serve_setup) -> None:
    from exgra.serve import ServeConfig, create_app
    from exgra.serve.engine import load_served_model

    release = threading.Event()

    def slow_loader(config: ServeConfig):
        release.wait(30)
        return load_served_model(config)

    config = ServeConfig(model=str(serve_setup["model_dir"]))
    server, thread, url = _run(create_app(config, loader=slow_loader))
    try:
        body = json.dumps(
            {"model": "tiny-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        )
        health = http(f"{url}/health")
        loading = http(f"{url}/v1/chat/completions", "POST", body, {"Content-Type": "application/json"})
        assert health.status == 503 and health.body["status"] == "loading"
        assert loading.status == 503 and loading.body["error"]["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 60
        while http(f"{url}/health").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answered = http(f"{url}/v1/chat/completions", "POST", body, {"Content-Type": "application/json"})
        assert answered.status == 200 and answered.body["choices"][0]["message"]["role"] == "assistant"
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("error", ["user", "bug"])
def test_failed_load_is_reported(serve_setup, caplog, error: str) -> None:
    from exgra.errors import ExgraError
    from exgra.serve import ServeConfig, create_app

    def broken_loader(config: ServeConfig):
        if error == "user":
            raise ExgraError("weights are corrupt")
        raise RuntimeError("weights are corrupt")

    server, thread, url = _run(create_app(ServeConfig(model="tiny"), loader=broken_loader))
    try:
        time.sleep(0.2)
        health = http(f"{url}/health")
        assert health.status == 503 and "weights are corrupt" in health.body["detail"]
    finally:
        server.should_exit = True
        thread.join(10)
    # A user's mistake is one log line; an unexpected error keeps its traceback for the bug report.
    failed = [
        record for record in caplog.records if record.getMessage().startswith("loading the model failed")
    ]
    assert len(failed) == 1
    assert (failed[0].exc_info is None) == (error == "user")


def test_cli_errors(run_exgra, tmp_path, monkeypatch) -> None:
    missing = run_exgra("serve", "--model", tmp_path / "nothing")
    assert missing.exit_code == 1 and "model directory not found" in missing.stderr
    unknown = run_exgra("serve", "--model", "tinyy")
    assert unknown.exit_code == 1 and "unknown model 'tinyy'" in unknown.stderr
    monkeypatch.delenv("EXGRA_UNSET_KEY", raising=False)
    no_key = run_exgra("serve", "--model", "tiny", "--api-key-env", "EXGRA_UNSET_KEY")
    assert no_key.exit_code == 1 and "EXGRA_UNSET_KEY" in no_key.stderr
    no_root = run_exgra("serve", "--model", "tiny", "--image-root", tmp_path / "none")
    assert no_root.exit_code == 1 and "--image-root" in no_root.stderr


def test_missing_serve_extra_is_one_clear_line(run_exgra, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if exgra[serve] were not installed
    result = run_exgra("serve", "--model", "tiny")
    assert result.exit_code == 1 and 'pip install "exgra[serve]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
