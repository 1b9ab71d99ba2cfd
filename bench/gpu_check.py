"""GPU checks that CPU machines cannot run: QLoRA, a bf16 step with alignment (time, tokens/s, MFU), FSDP.

Run from the repository root on a machine with CUDA (``pip install -e ".[gpu,lora]"``):

    python bench/gpu_check.py [--models tiny-qwen2.5-vl tiny-gemma3] [--batch 8] [--steps 10]
        [--peak-tflops 989] [--skip-fsdp]

1. **QLoRA** (every family, LLaVA included): the model is saved, reloaded with ``model.quantization=4bit``
   (bitsandbytes NF4, double quantisation, bf16 compute; LLaVA from ``path=`` with its tower and
   projector kept in bf16) and trained through LoRA adapters for a few steps with the alignment on;
   the checks: only the language model's linear layers are 4-bit (tower, projector and LM head are not,
   by each family's ``quantization_skip_modules``), the adapters move, and the run's save (LoRA merged
   into the dequantised weights) reloads without quantisation with the 4-bit model's LM loss.
2. **bf16 step with alignment**: median step time (forward + backward + AdamW), tokens per second and
   model FLOPs utilisation ``MFU = 6 * trainable-and-frozen parameters * tokens / step time / peak``
   (the usual dense-transformer estimate; ``--peak-tflops`` is the GPU's bf16 peak, 989 for H100/H200).
3. **FSDP**: a short ``exgra train stage2`` run under the shipped
   ``exgra/configs/accelerate/fsdp_<family>.yaml`` with one process per visible GPU (accelerate refuses
   FSDP on CPU: this is where it runs first).

Pass real presets with weights as ``--models qwen2.5-vl-7b=/path/to/Qwen2.5-VL-7B-Instruct``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIGS = {
    "qwen2.5-vl": "fsdp_qwen2_5_vl.yaml",
    "qwen3-vl": "fsdp_qwen3_vl.yaml",
    "gemma3": "fsdp_gemma3.yaml",
    "smolvlm": "fsdp_smolvlm.yaml",
    "llava": "fsdp_llava_mistral.yaml",
}


def _bundle(spec: str, **overrides):
    from exgra.models import create_model

    name, _, weights = spec.partition("=")
    if weights:
        overrides[_weights_key(name)] = weights
    return create_model(name, **overrides)


def _weights_key(name: str) -> str:
    """LLaVA loads a complete checkpoint (``path=``: a converted one or a llava-hf folder); the
    chat-template families load their released folder as ``llm=``."""
    from exgra.models import create_model

    return "path" if create_model(name, device="meta").family.name == "llava" else "llm"


def _batch(bundle, batch_size: int, device: torch.device) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from train_step import _batch as bench_batch

    batch = bench_batch(bundle, batch_size)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def check_step(spec: str, batch_size: int, steps: int, peak_tflops: float) -> str:
    from exgra.alignment import AlignmentConfig, MultiGraphAlignment
    from exgra.training.stages import apply_stage
    from exgra.training.steps import TrainingModule

    device = torch.device("cuda")
    bundle = _bundle(spec, dtype="bfloat16")
    family, model = bundle.family, bundle.model.to(device)
    apply_stage(model, "stage2", group_of=family.parameter_group)
    alignment = MultiGraphAlignment(AlignmentConfig(), feature_dim=family.hidden_size(model)).to(device)
    module = TrainingModule(model, alignment, family=family, pad_token_id=bundle.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    batch = _batch(bundle, batch_size, device)
    tokens = int(batch["attention_mask"].sum() + batch["response_mask"].sum() + batch["caption_mask"].sum())
    times = []
    for index in range(steps + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = module(batch)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    mfu = 6 * params * tokens / step / (peak_tflops * 1e12)
    return (
        f"{spec:<28} {family.name:<11} {params / 1e6:>9.1f}M {step * 1000:>9.1f} ms {tokens / step:>11.0f} "
        f"{mfu:>7.2%}  align_loss={float(losses['align_loss']):.4f}"
    )


def check_qlora(spec: str, steps: int) -> str:
    from exgra.alignment import AlignmentConfig, MultiGraphAlignment
    from exgra.training.stages import apply_stage
    from exgra.training.steps import TrainingModule

    name, _, weights = spec.partition("=")
    if not weights:  # a tiny preset: save it so that it can be reloaded from weights in 4 bit
        weights = tempfile.mkdtemp(prefix="exgra-qlora-")
        _bundle(spec).save(Path(weights) / "model")
        weights = str(Path(weights) / "model")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from exgra.models import create_model

    quantized = create_model(name, **{_weights_key(name): weights}, quantization="4bit", dtype="bfloat16")
    family = quantized.family
    four_bit_names = [n for n, m in quantized.model.named_modules() if type(m).__name__ == "Linear4bit"]
    kept = [n for n in four_bit_names if n == "lm_head" or family.parameter_group(f"{n}.weight") != "llm"]
    if kept or not four_bit_names:
        return f"QLoRA {spec}: FAILED (4-bit outside the language model: {kept[:3]}, or none at all)"
    model = prepare_model_for_kbit_training(quantized.model)
    targets = rf".*{family.language_model_pattern}.*\.(q_proj|k_proj|v_proj|o_proj)"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    apply_stage(model, "stage2", lora=True, group_of=family.parameter_group)
    alignment = MultiGraphAlignment(AlignmentConfig(), feature_dim=family.hidden_size(model)).cuda()
    module = TrainingModule(model, alignment, family=family, pad_token_id=quantized.tokenizer.pad_token_id)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    batch = _batch(quantized, 4, torch.device("cuda"))
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = module(batch)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    moved = sum(
        not torch.equal(before[n], p.detach().float()) for n, p in model.named_parameters() if n in before
    )
    four_bit = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    saved = _qlora_save_reloads(module, quantized, batch)
    status = "ok" if moved and four_bit and saved.startswith("ok") else "FAILED"
    return (
        f"QLoRA {spec}: {four_bit} 4-bit linear layers, {moved}/{len(before)} LoRA tensors moved, "
        f"saved checkpoint {saved}: {status}"
    )


def _qlora_save_reloads(module, quantized, batch: dict) -> str:
    """Save the QLoRA model as a run does (LoRA merged into the dequantised weights), reload it without
    quantisation and compare its LM loss on ``batch`` with the 4-bit model's."""
    import json

    from exgra.models import load_model
    from exgra.training.checkpoint import save_model_dir

    family = quantized.family
    directory = Path(tempfile.mkdtemp(prefix="exgra-qlora-save-")) / "final"
    save_model_dir(module, quantized, directory)
    if "quantization_config" in json.loads((directory / "config.json").read_text()):
        return "FAILED (config.json keeps a quantization_config)"
    plain = load_model(directory, dtype="bfloat16")  # quantization=none from exgra_model.yaml
    plain.model.to("cuda").eval()
    module.model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        four_bit_loss = float(family.lm_forward(module.model, batch)[0])
        plain_loss = float(family.lm_forward(plain.model, batch)[0])
    module.model.train()
    close = abs(four_bit_loss - plain_loss) <= 0.05 * abs(four_bit_loss) + 1e-3
    verdict = "ok" if close else "FAILED"
    return f"{verdict} (bf16 reload LM loss {plain_loss:.4f} vs 4-bit {four_bit_loss:.4f})"


def check_fsdp(spec: str, family_name: str) -> str:
    from tests.training.helpers import data_overrides, make_data

    workdir = Path(tempfile.mkdtemp(prefix="exgra-fsdp-"))
    data = make_data(workdir / "data", 32, "pretrain")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "exgra/configs/accelerate" / FSDP_CONFIGS[family_name]),
        "--num_processes", str(torch.cuda.device_count()), "--main_process_port", str(port),
        "-m", "exgra", "train", "stage2", "--config", str(ROOT / "exgra/configs/tiny_stage2.yaml"),
        "--output-dir", str(workdir / "run"), f"model.name={spec}", "train.precision=bf16",
        "train.max_steps=4", "train.save_every=2", *data_overrides(data),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return f"FSDP {spec}: FAILED ({seconds:.0f} s)\n{done.stderr[-2000:]}"
    final = workdir / "run" / "final" / "model.safetensors"
    config = FSDP_CONFIGS[family_name]
    return f"FSDP {spec} ({config}): 4 steps ok in {seconds:.0f} s, final weights {final.is_file()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm", "tiny-llava-siglip"],
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--skip-fsdp", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible; run it on a GPU machine")
    sys.path.insert(0, str(ROOT))
    print(f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
    header = f"{'model':<28} {'family':<11} {'params':>10} {'step':>12} {'tokens/s':>11} {'MFU':>7}"
    print(header + "\n" + "-" * len(header))
    for spec in args.models:
        print(check_step(spec, args.batch, args.steps, args.peak_tflops))
    for spec in args.models:
        print(check_qlora(spec, 3))
    if not args.skip_fsdp:
        for spec in args.models:
            if "=" not in spec:
                print(check_fsdp(spec, _bundle(spec, device="meta").family.name))


if __name__ == "__main__":
    main()
