"""Export benchmark: seconds for merge, convert and each quantization, file sizes, and the overhead of
kubetune's export over running llama.cpp's converter and quantizer directly on the same model.

    .venv/bin/python bench/export.py                       # tiny model, seconds on CPU
    .venv/bin/python bench/export.py --hidden-size 1024 --intermediate-size 2816 --layers 8

Builds a tiny Llama (kubetune_trainer.tiny_model) and a LoRA adapter with random non-zero B
weights, runs ``export_model`` (merge -> convert -> quantize -> Modelfile -> verify -> manifest),
then runs llama.cpp's ``convert_hf_to_gguf.py`` and ``llama_model_quantize`` by hand on the
merged model it produced. Prints figures; asserts nothing. Needs ``hack/fetch-llama-cpp.sh``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_adapter(base_dir: Path, out_dir: Path, rank: int, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # lora_A's initialisation
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(
            r=rank,
            lora_alpha=2 * rank,  # alpha is usually 2 x rank
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter change the model
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(out_dir)
    return out_dir


def direct_llama_cpp(merged: Path, out_dir: Path, quantizations: list[str]) -> dict[str, float]:
    """llama.cpp's converter and quantizer by hand, as a user would run them."""
    from kubetune_trainer.export.llamacpp import (
        QUANTIZATION_FTYPES,
        import_llama_cpp,
        llama_cpp_dir,
    )

    llama_cpp = import_llama_cpp()
    root = llama_cpp_dir()
    timings: dict[str, float] = {}
    f16 = out_dir / "direct-f16.gguf"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(root / "convert_hf_to_gguf.py"),
            str(merged),
            "--outfile",
            str(f16),
            "--outtype",
            "f16",
        ],
        env={**os.environ, "PYTHONPATH": str(root / "gguf-py")},
        check=True,
        capture_output=True,
    )
    timings["convert"] = time.perf_counter() - start
    for q in quantizations:
        if q == "f16":
            continue
        params = llama_cpp.llama_model_quantize_default_params()  # type: ignore[attr-defined]
        params.ftype = QUANTIZATION_FTYPES[q]
        params.nthread = os.cpu_count() or 1
        start = time.perf_counter()
        import ctypes

        rc = llama_cpp.llama_model_quantize(  # type: ignore[attr-defined]
            str(f16).encode(), str(out_dir / f"direct-{q}.gguf").encode(), ctypes.byref(params)
        )
        timings[f"quantize_{q}"] = time.perf_counter() - start
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize -> {q} failed with {rc}")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--intermediate-size", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--quantizations", default="f16,q8_0,q5_k_m,q4_k_m")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep files here (default: a temp dir)"
    )
    args = parser.parse_args()
    quantizations = [q.strip() for q in args.quantizations.split(",") if q.strip()]

    from kubetune_trainer.export import export_model
    from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-export-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        base = build_tiny_llama(
            work / "base",
            BUILTIN_CORPUS,
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            num_layers=args.layers,
            num_heads=args.heads,
            num_kv_heads=args.kv_heads,
        )
        adapter = make_adapter(base, work / "adapter", args.rank, seed=0)
        setup = time.perf_counter() - start
        n_params = sum(
            p.numel()
            for p in __import__("transformers")
            .AutoModelForCausalLM.from_pretrained(base)
            .parameters()
        )

        start = time.perf_counter()
        result = export_model(base, adapter, work / "export", quantizations)
        ours_total = time.perf_counter() - start
        direct = direct_llama_cpp(work / "export" / "merged", work, quantizations)

        print(
            f"model: llama, {n_params / 1e6:.2f}M parameters "
            f"(hidden {args.hidden_size}, intermediate {args.intermediate_size}, {args.layers} layers, "
            f"vocab {args.vocab_size}); LoRA rank {args.rank}; setup {setup:.1f}s"
        )
        print(f"llama.cpp: {result.llama_cpp_version}; cpus: {os.cpu_count()}")
        print()
        print(f"{'stage':<22}{'kubetune s':>12}{'direct s':>12}")
        for stage, seconds in result.timings.items():
            print(f"{stage:<22}{seconds:>12.2f}{direct.get(stage, float('nan')):>12.2f}")
        ours_core = sum(
            v for k, v in result.timings.items() if k == "convert" or k.startswith("quantize_")
        )
        direct_total = sum(direct.values())
        print(f"{'total (wall)':<22}{ours_total:>12.2f}{direct_total:>12.2f}")
        print()
        print(f"{'artifact':<22}{'bytes':>14}{'MiB':>10}  sha256")
        for a in result.artifacts:
            print(f"{a.name:<22}{a.size_bytes:>14}{a.size_bytes / 2**20:>10.2f}  {a.sha256[:16]}")
        print()
        print(
            "verification (teacher-forced token agreement with HF, max |delta logit|, greedy exact):"
        )
        for check in result.verification.checks:
            print(
                f"  {check.quantization:<8} agreement {check.token_agreement:.3f}  "
                f"max|dlogit| {check.max_logit_delta:.4f}  greedy_exact {check.greedy_exact}"
            )
        print()
        print(
            f"overhead, convert+quantize inside export vs direct: {ours_core / direct_total:.2f}x"
        )
        print(
            f"overhead, whole export (merge, verify, hashes, Modelfiles) vs direct convert+quantize: "
            f"{ours_total / direct_total:.2f}x"
        )


if __name__ == "__main__":
    main()
