"""Answer files both scorers read (ids keep their JSON type) and the reference's generation rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exgra.eval.generate import AnswerGenerator, GenerationSettings, _StopOnStrings, load_inference_model
from exgra.eval.scoring import score_answers
from exgra.eval.vqa import AnswerShards, VQAEvalConfig, read_jsonl, run_vqa_eval
from tests.eval.test_generate import _one_thread, build_demo, save_tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def mixed_ids(tmp_path_factory: pytest.TempPathFactory):
    """The demo test set with integer ids (as VQA-RAD / SLAKE ship them) and one string id."""
    root = tmp_path_factory.mktemp("ids")
    demo = build_demo(root / "demo", num_samples=60)
    records = json.loads(Path(demo.test).read_text())[:5]
    for index, record in enumerate(records):
        record["id"] = 100 + index if index < 4 else "path-7"
    test = root / "test_int_ids.json"
    test.write_text(json.dumps(records))
    return save_tiny_model(root / "model"), demo, test, [record["id"] for record in records]


def test_answers_scores_and_shards_keep_id_types(mixed_ids, tmp_path: Path) -> None:
    model, demo, test, ids = mixed_ids
    output = tmp_path / "answers.jsonl"
    config = VQAEvalConfig(
        model=model, data=test, images=demo.image_folder, output=output, max_new_tokens=4, progress=False
    )
    run_vqa_eval(config)
    answers = read_jsonl(output, allow_torn_tail=False)
    # The reference scorer's own check (run_eval.py): the id sequences are identical, types included.
    assert [line["question_id"] for line in answers] == ids
    assert [type(line["question_id"]) for line in answers] == [int, int, int, int, str]
    report = score_answers(test, output)
    items = tmp_path / "items.jsonl"
    report.save_items(items)
    assert [json.loads(line)["id"] for line in items.read_text().splitlines()] == ids

    # Merged shards: part files written with int ids come back as ints, in question order.
    shards = AnswerShards(tmp_path / "merged.jsonl")
    for rank, part in enumerate((answers[3:], answers[:3])):
        shards.part_path(rank).write_text("".join(json.dumps(line) + "\n" for line in part))
    assert shards.merge(ids) == len(ids)
    assert [line["question_id"] for line in read_jsonl(shards.output)] == ids


def test_exgra_score_reads_a_reference_written_answers_file(mixed_ids, tmp_path: Path, run_exgra) -> None:
    _model, _demo, test, ids = mixed_ids
    gold = [record["conversations"][1]["value"] for record in json.loads(test.read_text())]
    # model_vqa_med.py's line: integer question_id, raw text with the "Assistant:" prefix, empty metadata.
    lines = [
        {
            "question_id": qid,
            "prompt": "q\n<image>",
            "text": f"Assistant: {answer}",
            "answer_id": "Vx3Yq8s2LtJ9cW4mE7nRkA",
            "model_id": "./checkpoints/exgra-med-dci",
            "metadata": {},
        }
        for qid, answer in zip(ids, gold, strict=True)
    ]
    pred = tmp_path / "reference_answers.jsonl"
    pred.write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = tmp_path / "metrics.json"
    result = run_exgra("score", "--gt", test, "--pred", pred, "--output", metrics)
    assert result.exit_code == 0, result.stderr
    written = json.loads(metrics.read_text())
    assert written["num_open"] + written["num_closed"] == len(ids)
    assert [item.id for item in score_answers(test, pred).items] == ids


class _CharTokenizer:
    """Decodes id ``i`` to ``chr(i)``: enough to drive the stop rule with chosen text."""

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(int(token)) for token in row) for row in rows]


def test_stop_rule_is_the_reference_keyword_criterion() -> None:
    # KeywordsStoppingCriteria: not checked on the first new token, then the whole continuation.
    stop = _StopOnStrings(_CharTokenizer(), ["###"], prompt_length=2)
    prompt = [ord("#"), ord("#")]  # a prompt ending in "##" must not count
    first = torch.tensor([[*prompt, ord("#")]])
    assert not bool(stop(first, None)[0])
    assert not bool(stop(torch.tensor([[*prompt, ord("a"), ord("#")]]), None)[0])
    long = [*prompt, *map(ord, "Assistant: no " * 3), *map(ord, "###")]
    assert bool(stop(torch.tensor([long]), None)[0])  # found however far back it starts
    assert not bool(stop(torch.tensor([[*prompt, ord("#"), ord("#")]]), None)[0])


def test_generation_uses_the_checkpoints_eos_and_reference_defaults(mixed_ids, tmp_path: Path) -> None:
    model, demo, test, _ids = mixed_ids
    config_path = model / "generation_config.json"
    saved = json.loads(config_path.read_text())
    bundle = load_inference_model(model)
    assert AnswerGenerator(bundle).eos_token_id == saved["eos_token_id"]
    bundle.model.generation_config.eos_token_id = 5
    assert AnswerGenerator(bundle).eos_token_id == 5
    output = tmp_path / "answers.jsonl"
    config = VQAEvalConfig(
        model=model, data=test, images=demo.image_folder, output=output, limit=1, progress=False, score=False
    )
    run_vqa_eval(config)
    info = json.loads((tmp_path / "answers.run.json").read_text())["generation"]
    assert info["max_new_tokens"] == 1024 and info["image_conversion"] == "reference"
    assert info["eos_token_id"] == saved["eos_token_id"] and info["dtype"] == "float32"
    assert info["tokenizer"].endswith("(fast)") and info["stop_strings"] == ["###"]
    assert GenerationSettings().max_new_tokens == 128


def test_slow_prompt_tokenisation_gives_the_reference_training_ids(mixed_ids) -> None:
    from exgra.models.tokenizer import reference_token_spans

    model, *_ = mixed_ids
    bundle = load_inference_model(model)
    slow = AnswerGenerator(bundle, settings=GenerationSettings(prompt_tokenization="slow"))
    prompts = [slow.build_prompt("Is there a mass?\n<image>"), slow.build_prompt("Organ?")]
    batch = slow.encode(prompts)
    for row, mask, prompt in zip(batch["input_ids"], batch["attention_mask"], prompts, strict=True):
        expected = [
            bundle.tokenizer.bos_token_id,
            *(token for token, _ in reference_token_spans(bundle.tokenizer, prompt)),
        ]
        assert row[mask.bool()].tolist() == expected and mask.tolist() == sorted(mask.tolist())
    fast = AnswerGenerator(bundle).encode(prompts[:1])["input_ids"][0].tolist()
    # The two rules differ around the image block (the fast tokenizer keeps the "\n" before <im_start>).
    assert fast != batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
