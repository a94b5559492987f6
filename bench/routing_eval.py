"""Routing figures of merged MoE models, measured by transformers (bench/routing.ts runs this).

Request (JSON file, argv[1]): {"models": [folder, ...], "texts": [{"ids": [...], "expert": e}, ...], "topK": k}.
Each text's token ids (mergekit-moe's convention: BOS + prompt) run through each model in float32 with
output_router_logits=True; every token of every text at every MoE layer counts. Prints one JSON line: per model,
top-1 and top-k agreement with the text's intended expert, per-text top-1 (the expert that wins most of a text's
token-layer top-1 choices), and MaxVio per layer (max load / mean load - 1, load = share of top-k assignments):
the worst layer and the mean over layers.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def figures(folder, texts, k):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    top1 = topk = n = 0
    text_hits = 0
    loads = None
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([t["ids"]])
            out = model(input_ids=ids, output_router_logits=True)
            layers = [r.reshape(-1, r.shape[-1]) for r in out.router_logits]
            if loads is None:
                loads = [torch.zeros(l.shape[-1], dtype=torch.float64) for l in layers]
            e = t["expert"]
            votes = torch.zeros(layers[0].shape[-1])
            for li, logits in enumerate(layers):
                chosen = logits.topk(k, dim=-1).indices
                top1 += int((chosen[:, 0] == e).sum())
                topk += int((chosen == e).any(dim=-1).sum())
                n += chosen.shape[0]
                votes += torch.bincount(chosen[:, 0], minlength=votes.shape[0])
                loads[li] += torch.bincount(chosen.reshape(-1), minlength=loads[li].shape[0]).double()
            text_hits += int(int(votes.argmax()) == e)
    vios = [float(l.max() / l.mean() - 1) for l in loads]
    return {
        "top1": top1 / n,
        "topk": topk / n,
        "maxVioWorst": max(vios),
        "maxVioMean": sum(vios) / len(vios),
        "perTextTop1": text_hits / len(texts),
        "tokens": n // len(loads),
    }


def main():
    req = json.load(open(sys.argv[1]))
    torch.set_num_threads(2)
    print(json.dumps([figures(m, req["texts"], req["topK"]) for m in req["models"]]))


if __name__ == "__main__":
    main()
