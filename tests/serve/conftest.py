"""One running ``exgra serve`` (tiny model, API key, web chat, an image root) shared by the serve tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exgra.data.records import load_vqa_records, vqa_question
from tests.eval.test_generate import build_demo, save_tiny_model
from tests.serve.helpers import running_server

API_KEY = "test-key-7f3a"  # a throwaway key for the test server, passed through the environment only
KEY_ENV = "EXGRA_TEST_SERVE_KEY"
MAX_IMAGE_PIXELS = 200_000
MAX_REQUEST_BYTES = 3_000_000


@pytest.fixture(scope="session")
def serve_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    demo = build_demo(root / "demo", num_samples=20)
    model_dir = save_tiny_model(root / "tiny-model")
    image_root = root / "image-root"
    (image_root / "scans").mkdir(parents=True)
    images = sorted(Path(demo.image_folder).glob("*.png"))
    for image in images[:4]:
        shutil.copy(image, image_root / "scans" / image.name)
    secret = root / "outside.png"
    shutil.copy(images[0], secret)
    (image_root / "scans" / "link-out.png").symlink_to(secret)
    records = load_vqa_records(demo.train)
    questions = [(vqa_question(r), Path(demo.image_folder) / r.image) for r in records]
    return {
        "root": root,
        "model_dir": model_dir,
        "image_root": image_root,
        "images": images,
        "secret": secret,
        "questions": questions,
    }


@pytest.fixture(scope="session")
def server(serve_setup: dict, tmp_path_factory: pytest.TempPathFactory):
    args = [
        "--model", str(serve_setup["model_dir"]),
        "--api-key-env", KEY_ENV,
        "--ui",
        "--image-root", str(serve_setup["image_root"]),
        "--max-image-pixels", str(MAX_IMAGE_PIXELS),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--max-tokens-limit", "64",
        "--default-max-tokens", "16",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with running_server(args, log, env={KEY_ENV: API_KEY}) as running:
        yield running
        assert running.alive(), running.log()
        assert API_KEY not in running.log()  # the key is never logged


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.api, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_name(serve_setup: dict) -> str:
    return serve_setup["model_dir"].name
