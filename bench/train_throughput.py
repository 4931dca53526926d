"""Training throughput and peak memory: kubetune's training path vs a plain transformers Trainer.

    .venv/bin/python bench/train_throughput.py                                  # CPU, tiny model, lora
    .venv/bin/python bench/train_throughput.py --method qlora --steps 20
    .venv/bin/python bench/train_throughput.py --device cuda --size 1b --method qlora --steps 30
    .venv/bin/python bench/train_throughput.py --device cuda --size 1b --nproc 4   # 1 vs 4 GPUs (DDP)
    .venv/bin/python bench/train_throughput.py --nproc 2 --repeat 1                # 1 vs 2 CPU processes

"ours" is `kubetune_trainer.train.run.train_model` (trl's SFTTrainer, our config, progress callback,
checkpoints every `--save-every` steps, the adapter saved at the end); "baseline" is
`transformers.Trainer` on a `peft.get_peft_model` model with the chat text tokenised by hand and the
same batch size, steps, learning rate, dtype, 4-bit settings and gradient checkpointing, its adapter
and tokenizer saved at the end too. Both train on the same records and count the same thing:
non-padding input tokens per second of the training loop (`on_train_begin` to `on_train_end`, what
`TrainingSummary.tokensPerSecond` reports). Each side runs in its own process so peak memory is its
own: RSS high-water mark (VmHWM) on CPU, `torch.cuda.max_memory_allocated` on GPU. Models are built
from a config (random weights, no download): `tiny` = the builtin tiny Llama (hidden 256, 2 layers),
`small` = hidden 512, 4 layers, `1b` = a TinyLlama-1.1B-shaped model (hidden 2048, 22 layers, vocab
32000).

On a shared machine the wall-clock figures swing with the neighbours' load; tokens per CPU-second
is the steadier comparison. Each child's CPU time runs from its first library import (torch, peft,
trl, kubetune; only `transformers` itself is imported before) to the saved adapter, and is split at
the Trainer's `on_train_begin` / `on_train_end`: "before the training loop" is imports, model load,
data preparation and the Trainer's setup, "in the training loop" is the steps alone (per-step
overhead shows there). Even CPU time varies by ±10% between runs on a loaded machine, so the sides
run alternately `--repeat` times: the table gives medians, the ratio of the medians, the range of
the per-run ratios (baseline and kubetune of the same round ran under about the same load) and the
ratio of each side's best run (load only ever adds CPU time).
`--nproc N` compares kubetune's training path in 1 process with N processes in one machine
(torchrun + DDP, as a pod with `resources.gpus: N` runs it; on CPU N gloo processes, each with
`--threads` threads): `--batch-size` is per process, so N processes train N times the records per
step (weak scaling, as a FineTuneJob's `batchSize` does). It prints each side's tokens/s (non-padding
tokens of all ranks over the training loop's wall time), the speed-up and the scaling efficiency
(speed-up / N); peak memory is rank 0's.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_layers": 4,
        "num_heads": 8,
        "num_kv_heads": 4,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_layers": 22,
        "num_heads": 32,
        "num_kv_heads": 4,
    },
}


def records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Chat records of a few dozen tokens each, like a support-routing dataset."""
    rng = random.Random(seed)
    words = [
        "order",
        "invoice",
        "parcel",
        "password",
        "refund",
        "app",
        "crash",
        "login",
        "delivery",
        "charge",
        "screen",
        "account",
    ]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(12, 40)))
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Ticket {i}: {text}"},
                    {"role": "assistant", "content": rng.choice(words)},
                ]
            }
        )
    return out


def build_model(size: str, root: Path) -> Path:
    """A model folder of `size` with the tiny SentencePiece tokenizer (vocab widened for `1b`)."""
    from kubetune_trainer.tiny_model import build_tiny_llama

    out = root / f"model-{size}"
    if (out / "config.json").is_file():
        return out
    corpus = [json.dumps(r) for r in records(200)]
    build_tiny_llama(out, corpus, **SIZES[size])
    if size == "1b":
        # A realistic vocabulary for the embedding and LM head; the tokenizer only uses its first ids.
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out)
        model.resize_token_embeddings(32000)
        model.save_pretrained(out)
    return out


@dataclass
class TrainLoopClock:
    """(CPU time, wall time) at the start and the end of the Trainer's training loop
    (`on_train_begin`, `on_train_end`)."""

    begin: tuple[float, float] | None = None
    end: tuple[float, float] | None = None

    def tick(self) -> None:
        now = (time.process_time(), time.monotonic())
        if self.begin is None:
            self.begin = now
        self.end = now


def spec_for(args: argparse.Namespace) -> Any:
    from kubetune.api.finetunejob import FineTuneJobSpec

    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "file://model"},
            "method": args.method,
            "dataset": {"source": {"uri": "file://data.jsonl"}},
            "lora": {"r": 16, "alpha": 32},
            "quantization": {
                "type": "nf4",
                "doubleQuant": True,
                "computeDtype": args.compute_dtype,
            },
            "training": {
                "maxSteps": args.steps,
                "batchSize": args.batch_size,
                "gradientAccumulationSteps": 1,
                "learningRate": 2e-4,
                "maxLength": args.max_length,
                "evalSteps": args.save_every,
                "gradientCheckpointing": args.gradient_checkpointing,
            },
            "resources": {"gpus": 1 if args.device == "cuda" else 0},
        }
    )


def run_ours(
    args: argparse.Namespace, model_dir: Path, workdir: Path, clock: TrainLoopClock
) -> dict[str, Any]:
    from kubetune_trainer.models import ResolvedModel, load_tokenizer
    from kubetune_trainer.train.run import train_model

    base = ResolvedModel(uri="file://model", path=model_dir)
    tokenizer = load_tokenizer(base)
    outcome = train_model(
        spec_for(args),
        base,
        tokenizer,
        records(args.records),
        [],
        workdir,
        data_format="chat",
        device=args.device,
        # The progress hook runs first in on_train_begin and last in on_train_end.
        on_progress=lambda _: clock.tick(),
    )
    from kubetune_trainer import distributed

    if not distributed.is_main_process():
        return {}
    state = json.loads((Path(outcome.output_dir) / "trainer_state.json").read_text())
    return {
        "tokens_per_second": outcome.tokens_per_second,
        "steps": outcome.global_step,
        "tokens": state["num_input_tokens_seen"],
    }


def run_baseline(
    args: argparse.Namespace, model_dir: Path, workdir: Path, clock: TrainLoopClock
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class ClockCallback(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock.tick()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            clock.tick()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    on_gpu = args.device == "cuda"
    half = torch.bfloat16 if on_gpu else torch.float32
    kwargs: dict[str, Any] = {"device_map": {"": args.device}, "dtype": half}
    if args.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, args.compute_dtype),
        )
    if args.method == "full":
        kwargs["dtype"] = torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    if args.method != "full":
        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
        if args.gradient_checkpointing:
            model.enable_input_require_grads()

    texts = [
        tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records(args.records)
    ]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(
            b["text"], truncation=True, max_length=args.max_length, add_special_tokens=False
        ),
        batched=True,
        remove_columns=["text"],
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(workdir),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=2e-4,
            logging_steps=max(1, args.steps // 10),
            save_strategy="steps",
            save_steps=args.save_every,
            report_to="none",
            disable_tqdm=True,
            use_cpu=not on_gpu,
            bf16=on_gpu,
            gradient_checkpointing=args.gradient_checkpointing,
            include_num_input_tokens_seen="non_padding",
            seed=42,
        ),
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[ClockCallback()],
    )
    trainer.train()
    # A run ends with its result on disk, as train_model's does.
    trainer.save_model(str(workdir / "adapter"))
    tokenizer.save_pretrained(str(workdir / "adapter"))
    assert clock.begin is not None and clock.end is not None
    # The interval ProgressCallback measures for ours (TrainingSummary.tokensPerSecond).
    seconds = clock.end[1] - clock.begin[1]
    return {
        "tokens_per_second": trainer.state.num_input_tokens_seen / seconds,
        "steps": trainer.state.global_step,
        "tokens": trainer.state.num_input_tokens_seen,
    }


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("KUBETUNE_METRICS_PORT", "0")
    import transformers

    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    clock = TrainLoopClock()
    from kubetune_trainer import distributed

    # Under torchrun (--nproc) the ranks share the launcher's workdir; rank 0 reports.
    distributed.init_worker(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        runner = run_ours if args.child == "ours" else run_baseline
        cpu, wall = time.process_time(), time.monotonic()
        figures = runner(args, Path(args.model_dir), Path(args.workdir or tmp), clock)
        figures["cpu_s"] = time.process_time() - cpu
        figures["run_s"] = time.monotonic() - wall
    if not distributed.is_main_process():
        distributed.finish_worker()
        return
    assert clock.begin is not None and clock.end is not None, "the training loop never started"
    figures["cpu_before_train_s"] = clock.begin[0] - cpu
    figures["train_cpu_s"] = clock.end[0] - clock.begin[0]
    figures["tokens_per_cpu_second"] = figures["tokens"] / figures["cpu_s"]
    figures["tokens_per_train_cpu_second"] = figures["tokens"] / figures["train_cpu_s"]
    figures["peak_memory_mib"] = peak_memory_mib(args.device)
    print("RESULT " + json.dumps(figures), flush=True)
    distributed.finish_worker()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    parser.add_argument("--compute-dtype", choices=["bfloat16", "float16", "float32"], default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--save-every",
        type=int,
        default=1000,
        help="checkpoint interval (ours) / save_steps (baseline)",
    )
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per side (default 1: busy-waiting OpenMP threads on a shared machine turn "
        "the neighbours' load into noise)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per side, alternating (default 3; the table gives medians and the range of the "
        "per-run ratios)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="compare kubetune's training in 1 process with N processes (torchrun + DDP; one per "
        "GPU with --device cuda) instead of kubetune with the plain-Trainer baseline",
    )
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", choices=["ours", "baseline"], default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.compute_dtype is None:
        args.compute_dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.child:
        child(args)
        return

    cache = Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune") / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.size, cache)
    print(
        f"model {args.size} ({model_dir}), method {args.method}, device {args.device}, steps {args.steps}, "
        f"batch {args.batch_size}, maxLength {args.max_length}, gradient checkpointing {args.gradient_checkpointing}, "
        f"compute dtype {args.compute_dtype if args.method == 'qlora' else '-'}"
        + (f", {args.threads} CPU thread(s) per side" if args.device == "cpu" else "")
    )
    passthrough = [a for a in sys.argv[1:]]
    if args.nproc is not None:
        # The children need not know it, and torchrun would take --nproc for its own option.
        passthrough = without_option(passthrough, "--nproc")
        compare_processes(args, passthrough, model_dir)
        return
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
    for round_ in range(1, args.repeat + 1):
        for side in ("baseline", "ours"):
            runs[side].append(run_child(side, args, passthrough, model_dir))
        base, ours = runs["baseline"][-1], runs["ours"][-1]
        print(
            f"run {round_}: tokens per CPU-second baseline {base['tokens_per_cpu_second']:.1f} "
            f"({base['cpu_s']:.2f} CPU s, {base['train_cpu_s']:.2f} in the training loop), "
            f"kubetune {ours['tokens_per_cpu_second']:.1f} "
            f"({ours['cpu_s']:.2f} CPU s, {ours['train_cpu_s']:.2f} in the training loop): "
            f"ratio {ours['tokens_per_cpu_second'] / base['tokens_per_cpu_second']:.3f}, "
            f"training loop only {ours['tokens_per_train_cpu_second'] / base['tokens_per_train_cpu_second']:.3f}",
            flush=True,
        )
    print_summary(runs, args.device)


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def compare_processes(args: argparse.Namespace, passthrough: list[str], model_dir: Path) -> None:
    """kubetune's training path in 1 process vs `--nproc` processes, alternating `--repeat` times."""
    if not 2 <= args.nproc <= 16:
        sys.exit("--nproc: give 2 to 16 processes (1 is the side it is compared with)")
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < args.nproc:
            sys.exit(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} GPU(s)")
    runs: dict[int, list[dict[str, Any]]] = {1: [], args.nproc: []}
    for round_ in range(1, args.repeat + 1):
        for n in runs:
            runs[n].append(run_child("ours", args, passthrough, model_dir, nproc=n))
            r = runs[n][-1]
            print(
                f"run {round_}, {n} process(es): {r['tokens_per_second']:.1f} tokens/s, "
                f"{r['tokens']} tokens in {r['steps']} steps",
                flush=True,
            )
    one = float(median(r["tokens_per_second"] for r in runs[1]))
    many = float(median(r["tokens_per_second"] for r in runs[args.nproc]))
    print(f"medians of {args.repeat} run(s); --batch-size {args.batch_size} per process")
    print(f"{'processes':<12}{'tokens/s':>12}{'speed-up':>10}{'efficiency':>12}{'peak MiB (rank 0)':>20}")
    for n, value in ((1, one), (args.nproc, many)):
        memory = float(median(r["peak_memory_mib"] for r in runs[n]))
        print(f"{n:<12}{value:>12.1f}{value / one:>10.2f}{value / one / n:>12.2f}{memory:>20.1f}")


def run_child(
    side: str,
    args: argparse.Namespace,
    passthrough: list[str],
    model_dir: Path,
    *,
    nproc: int = 1,
) -> dict[str, Any]:
    """One side's figures from a fresh process (its own peak memory and imports); with
    `nproc` > 1, from `nproc` torchrun workers sharing one workdir (rank 0 reports)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    workdir = tempfile.mkdtemp(prefix="kubetune-bench-")
    proc = subprocess.run(
        [
            *launcher,
            __file__,
            *passthrough,
            "--child",
            side,
            "--model-dir",
            str(model_dir),
            "--compute-dtype",
            args.compute_dtype,
            "--workdir",
            workdir,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env if args.device == "cpu" else None,
    )
    shutil.rmtree(workdir, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        sys.exit(1)
    figures: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return figures


def print_summary(runs: dict[str, list[dict[str, Any]]], device: str) -> None:
    """Medians per side; for ratios, the ratio of the medians and the range of per-run ratios."""
    base_runs, our_runs = runs["baseline"], runs["ours"]

    def med(side_runs: list[dict[str, Any]], key: str) -> float:
        return float(median(float(r[key] or 0) for r in side_runs))

    memory = "peak GPU MiB (max_memory_allocated)" if device == "cuda" else "peak RSS MiB (VmHWM)"
    print(f"medians of {len(base_runs)} run(s) per side")
    print(f"{'':<44}{'baseline':>10}{'kubetune':>10}{'ratio':>8}  per-run ratios  best-run ratio")
    for key, label in (
        ("tokens_per_second", "tokens/s (non-padding, train loop wall)"),
        ("tokens_per_cpu_second", "tokens per CPU-second (whole run)"),
        ("tokens_per_train_cpu_second", "tokens per CPU-second (training loop)"),
        ("peak_memory_mib", memory),
    ):
        b, o = med(base_runs, key), med(our_runs, key)
        pairs = [
            float(x[key] or 0) / float(y[key])
            for x, y in zip(our_runs, base_runs, strict=True)
            if y[key]
        ]
        spread = f"{min(pairs):.3f}-{max(pairs):.3f}" if pairs else "-"
        # Neighbours' load only ever adds CPU time, so each side's best run is its least disturbed
        # (for memory, the lowest peak).
        pick = min if key == "peak_memory_mib" else max
        best_b = pick(float(r[key] or 0) for r in base_runs)
        best_o = pick(float(r[key] or 0) for r in our_runs)
        best = f"{best_o / best_b:.3f}" if best_b else "-"
        print(
            f"{label:<44}{b:>10.1f}{o:>10.1f}{(o / b if b else float('nan')):>8.3f}"
            f"  {spread:<14}  {best}"
        )
    for key, label in (
        ("cpu_s", "CPU s (imports to saved adapter)"),
        ("cpu_before_train_s", "CPU s before the training loop"),
        ("train_cpu_s", "CPU s in the training loop"),
        ("run_s", "wall s (imports to saved adapter)"),
    ):
        print(f"{label:<44}{med(base_runs, key):>10.2f}{med(our_runs, key):>10.2f}")
    print(f"{'steps':<44}{base_runs[-1]['steps']:>10}{our_runs[-1]['steps']:>10}")


if __name__ == "__main__":
    main()
