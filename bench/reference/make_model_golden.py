"""Golden file for the whole-model test (model/llama_golden_test.ts): a tiny random Llama-3.1 run by
transformers + PEFT in float64 on the CPU.

Writes model/testdata/tiny_llama/ (config.json, model.safetensors with F16 weights, adapter/ with the
PEFT adapter) and model/testdata/tiny_llama_golden.safetensors (logits, per-token NLL, every LoRA
gradient of the summed NLL, and the mean losses of 5 AdamW steps) with the scalars in its metadata.

The base linear weights are NF4-exact: every element is codebook[q] * c with one +-c element in each
64-block and one power-of-two c per tensor, so every block absmax equals c, the double-quantized
absmax is exact (offset c, residuals 0) and NF4 quantization (FACTS.md) returns the same values. The
same reference therefore pins both the f16 and the NF4 paths of the engine.

Run from the repository root (about 10 s on a CPU):  python3 bench/reference/make_model_golden.py
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model

torch.manual_seed(20240726)
torch.use_deterministic_algorithms(True)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "model", "testdata")
MODEL_DIR = os.path.join(OUT, "tiny_llama")

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=torch.float32)

cfg = LlamaConfig(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
    rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=[2, 3], hidden_act="silu", attention_bias=False, mlp_bias=False,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    torch_dtype="float16",
)
cfg._attn_implementation = "eager"


def nf4_exact(out, inp, c):
    """[out, in] f16 values codebook[q] * c, each 64-block holding a +-c element."""
    n = out * inp
    q = torch.randint(0, 16, (n,))
    blocks = (n + 63) // 64
    for b in range(blocks):
        size = min(64, n - 64 * b)
        q[64 * b + int(torch.randint(0, size, ()))] = 0 if torch.rand(()) < 0.5 else 15
    return (NF4[q] * c).to(torch.float16).reshape(out, inp)


state = {}
C, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
state["model.embed_tokens.weight"] = torch.randn(V, C).to(torch.float16)
shapes = {
    "self_attn.q_proj": (4 * 32, C), "self_attn.k_proj": (2 * 32, C), "self_attn.v_proj": (2 * 32, C),
    "self_attn.o_proj": (C, 4 * 32), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I),
}
for l in range(cfg.num_hidden_layers):
    p = f"model.layers.{l}"
    state[f"{p}.input_layernorm.weight"] = (1 + 0.1 * torch.randn(C)).to(torch.float16)
    state[f"{p}.post_attention_layernorm.weight"] = (1 + 0.1 * torch.randn(C)).to(torch.float16)
    for name, (o, i) in shapes.items():
        state[f"{p}.{name}.weight"] = nf4_exact(o, i, 2.0 ** -3 if i == C else 2.0 ** -4)
state["model.norm.weight"] = (1 + 0.1 * torch.randn(C)).to(torch.float16)
state["lm_head.weight"] = (torch.randn(V, C) / C ** 0.5).to(torch.float16)

if os.path.exists(MODEL_DIR):
    shutil.rmtree(MODEL_DIR)
os.makedirs(MODEL_DIR)
save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(MODEL_DIR, "model.safetensors"),
          metadata={"format": "pt"})
cfg.save_pretrained(MODEL_DIR)

model = LlamaForCausalLM(cfg)
model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
model = model.to(torch.float64)
model.eval()

targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                              bias="none", task_type="CAUSAL_LM"))
lora_params = {}
with torch.no_grad():
    for name, prm in peft_model.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                prm.copy_(0.05 * torch.randn_like(prm))
            prm.copy_(prm.to(torch.float32).to(torch.float64))  # f32-exact masters
            key = name.replace(".default.weight", ".weight")
            lora_params[key] = prm
peft_model.to(torch.float32)
peft_model.save_pretrained(os.path.join(MODEL_DIR, "adapter"))
peft_model.to(torch.float64)

T = 24
ids = torch.randint(0, V, (1, T))
labels = ids.clone()
labels[0, :6] = -100
labels[0, 13] = -100
ignore = -100


def run():
    out = peft_model(input_ids=ids, labels=labels)
    shift_logits = out.logits[0, :-1]
    shift_labels = labels[0, 1:]
    nll = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=ignore, reduction="none")
    return out, nll


out, nll = run()
count = int((labels[0, 1:] != ignore).sum())
nll_sum = nll.sum()
nll_sum.backward()
golden = {
    "logits": out.logits[0].detach().to(torch.float32).contiguous(),
    "token_nll": nll.detach().to(torch.float32).contiguous(),
    "ids": ids[0].to(torch.int32).contiguous(),
    "labels": labels[0].to(torch.int32).contiguous(),
}
for key, prm in lora_params.items():
    golden[f"{key}.grad"] = prm.grad.detach().to(torch.float32).contiguous()

# 5 AdamW steps on the mean loss (what the trainer minimizes), torch defaults but no weight decay.
peft_model.zero_grad()
opt = torch.optim.AdamW(list(lora_params.values()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
losses = []
for step in range(5):
    opt.zero_grad()
    o, n = run()
    loss = n.sum() / count
    losses.append(float(loss))
    loss.backward()
    opt.step()
with torch.no_grad():
    losses.append(float(run()[1].sum() / count))

meta = {
    "nll_sum": repr(float(nll_sum)),
    "tokens": str(count),
    "adamw": json.dumps({"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
    "adamw_losses": json.dumps(losses),
    "made_by": f"torch {torch.__version__}, transformers, peft; float64 on CPU",
}
save_file(golden, os.path.join(OUT, "tiny_llama_golden.safetensors"), metadata=meta)
print(f"nll_sum {float(nll_sum):.6f} over {count} tokens; AdamW losses {[round(x, 5) for x in losses]}")
