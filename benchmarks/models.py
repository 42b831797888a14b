"""Model provisioning and dtype benchmark: pack conversion vs cached load, bf16 vs fp32 on CPU.

Prints, side by side in one run:

1. ``prepare`` of a pack into a fresh temp cache (sha256 + GGUF dequantisation + save) vs the
   cached path (manifest hit + ``from_pretrained`` of the bf16 safetensors);
2. greedy generation with each causal LM in bfloat16 vs float32 (prefill of a ~N-token RAG
   prompt, then decoding), runs interleaved so machine load affects both dtypes alike;
3. encoding passages with all-MiniLM-L6-v2 in float32 vs bfloat16.

    python benchmarks/models.py --quick          # smollm2 only, fewer repeats (~2 min)
    python benchmarks/models.py                  # smollm2 + qwen2.5 (~6-10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.3f}s"


def bench_prepare(name: str) -> None:
    from transformers import AutoModelForCausalLM

    from longread.models import packs

    pack = packs.get_pack(name)
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as tmp:
        t, c = time.perf_counter(), time.process_time()
        res = packs.prepare_pack(pack, tmp, progress=False)
        convert, convert_cpu = time.perf_counter() - t, time.process_time() - c
        assert res.converted
        t, c = time.perf_counter(), time.process_time()
        res2 = packs.prepare_pack(pack, tmp, progress=False)
        model = AutoModelForCausalLM.from_pretrained(res2.path, dtype="bfloat16")
        cached, cached_cpu = time.perf_counter() - t, time.process_time() - c
        assert not res2.converted
        del model
    # CPU seconds are printed too: on a shared machine wall time mostly measures the neighbours.
    print(f"{name:24s} first prepare (verify+convert+save) {convert:7.1f}s wall {convert_cpu:7.1f}s cpu | "
          f"cached prepare+load {cached:6.2f}s wall {cached_cpu:6.2f}s cpu | ratio {convert / cached:5.1f}x wall")


def bench_lm(name: str, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from longread.llm.hf import decode, render_chat
    from longread.models import ModelHub

    hub = ModelHub()
    path = hub.resolve(name)
    tok = hub.tokenizer(name)
    models = {dt: AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dt)).eval()
              for dt in ("bfloat16", "float32")}
    filler = " ".join(f"Passage sentence {i} mentions the river, the town and the year {1900 + i}." for i in range(400))
    ids = tok(filler, add_special_tokens=False, verbose=False)["input_ids"][:prompt_tokens]
    msg = "Answer briefly.\n\n" + tok.decode(ids) + "\n\nQuestion: Which year is mentioned first?\nAnswer:"
    prompt = tok(render_chat(tok, [{"role": "user", "content": msg}]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = prompt.shape[1]

    def run(m, steps: int):
        # No stop tokens: every run decodes exactly ``steps`` tokens.
        return decode(m, tok, input_ids=prompt, position_ids=torch.arange(n)[None], max_new_tokens=steps,
                      stop_ids=frozenset())[0]

    ttft: dict[str, list[float]] = {dt: [] for dt in models}
    per_token: dict[str, list[float]] = {dt: [] for dt in models}
    for dt, m in models.items():  # warm-up
        run(m, 2)
    for _ in range(repeats):
        for dt, m in models.items():
            d = run(m, new_tokens)
            ttft[dt].append(d.ttft_s)
            per_token[dt].append((d.seconds - d.ttft_s) / max(1, d.steps - 1))
    print(f"{name:24s} prompt {n} tok, {new_tokens} new | TTFT bf16 {_fmt(ttft['bfloat16'])} fp32 {_fmt(ttft['float32'])} "
          f"(fp32/bf16 {statistics.median(ttft['float32']) / statistics.median(ttft['bfloat16']):4.2f}x) | "
          f"per-token bf16 {_fmt(per_token['bfloat16'])} fp32 {_fmt(per_token['float32'])} "
          f"(fp32/bf16 {statistics.median(per_token['float32']) / statistics.median(per_token['bfloat16']):4.2f}x)")


def bench_encoder(n: int, repeats: int) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from longread.models import ModelHub

    path = ModelHub().resolve("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    texts = [f"Passage {i}: the river flows past the town of Zorbatown, founded in {1700 + i}, " * 6 for i in range(n)]
    models = {dt: AutoModel.from_pretrained(path, dtype=getattr(torch, dt)).eval() for dt in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {dt: [] for dt in models}
    embs = {}
    for _ in range(repeats):
        for dt, m in models.items():
            t = time.perf_counter()
            out = []
            with torch.inference_mode():
                for b in range(0, n, 32):
                    enc = tok(texts[b : b + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
                    h = m(**enc).last_hidden_state.float()
                    mask = enc["attention_mask"][..., None].float()
                    out.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
            times[dt].append(time.perf_counter() - t)
            embs[dt] = torch.cat(out)
    cos = (embs["float32"] * embs["bfloat16"]).sum(-1)
    print(f"all-minilm-l6-v2 encode {n} passages | fp32 {_fmt(times['float32'])} bf16 {_fmt(times['bfloat16'])} "
          f"(bf16/fp32 time {statistics.median(times['bfloat16']) / statistics.median(times['float32']):4.2f}x) | "
          f"cosine(fp32, bf16) min {cos.min():.4f} mean {cos.mean():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smollm2 only, fewer repeats")
    ap.add_argument("--no-convert", action="store_true", help="skip the (slow) first-conversion measurement")
    ap.add_argument("--lm", action="append", help="causal LM pack(s) to measure (default: by --quick)")
    ap.add_argument("--no-encoder", action="store_true", help="skip the encoder measurement")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    import os

    import torch

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times scale with it)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    lms = ["smollm2-135m-instruct"] if args.quick else ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"]
    lms = args.lm or lms
    repeats = 2 if args.quick else 3
    print("\n== pack conversion vs cached load ==")
    if args.no_convert:
        print("(skipped: --no-convert)")
    else:
        for name in lms:
            bench_prepare(name)
    print("\n== causal LM greedy generation, bf16 vs fp32 ==")
    for name in lms:
        bench_lm(name, args.prompt_tokens, args.new_tokens, repeats)
    if not args.no_encoder:
        print("\n== encoder, fp32 vs bf16 ==")
        bench_encoder(64 if args.quick else 256, repeats)


if __name__ == "__main__":
    main()
