"""How far the relay's token estimate (core/usage.py) is from OpenAI's real tokenizers.

The relay ships no tokenizer (docs/prompt-format.md: tiktoken downloads its BPE files at
run time), so this measures the estimate's error against one that bundles them: the npm
package js-tiktoken (pure JavaScript, ranks included), run with node. The test command
installs it beside the npm clients (tests/node/package.json, scripts/provision/60-npm-clients.sh):

    .venv/bin/python bench/token_estimate_error.py

Samples: the project's own docs (English prose with markdown), its Python sources (code),
tool-call JSON, the chart's JSON files in chunks, and short texts in other scripts (below). Prints, per kind and encoding,
the real tokens, the estimate's total, and the spread of estimate / real per sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from gptomni_relay.core.usage import estimate_tokens

ROOT = Path(__file__).resolve().parent.parent
ENCODINGS = ("o200k_base", "cl100k_base")
JS_TIKTOKEN = Path("/var/cache/gptomni/npm-clients/node_modules/js-tiktoken")
# A few hand-written texts in scripts the docs and sources lack (each ~60-120 characters).
OTHER_SCRIPTS = {
    "german": ["Die Weiterleitung nimmt jede Anfrage entgegen, faltet das Gespräch in eine einzige "
               "Eingabe und streamt die Antwort Stück für Stück zurück.",
               "Wenn ein Schlüssel sein Tageskontingent erreicht hat, antwortet der Dienst mit 429."],
    "russian": ["Ретранслятор принимает каждый запрос, сворачивает беседу в одну подсказку и "
                "передаёт ответ клиенту по частям.",
                "Когда ключ исчерпал дневной лимит токенов, сервис отвечает ошибкой 429."],
    "chinese": ["中继接收每个请求，把对话折叠成一个提示，然后把回答一块一块地流式返回给客户端。",
                "当密钥用完当天的令牌额度时，服务返回错误代码四百二十九。"],
    "japanese": ["リレーはすべてのリクエストを受け取り、会話を一つのプロンプトにまとめ、答えを少しずつ返します。",
                 "キーが一日のトークン上限に達すると、サービスはエラーを返します。"],
}


def samples() -> dict[str, list[str]]:
    prose = [p.strip() for doc in sorted((ROOT / "docs").glob("*.md"))
             for p in doc.read_text().split("\n\n") if len(p.strip()) > 80 and not p.lstrip().startswith("|")]
    code = []
    for source in sorted((ROOT / "service").rglob("*.py")):
        lines = source.read_text().splitlines()
        code += ["\n".join(lines[i:i + 30]) for i in range(0, len(lines), 30) if len(lines[i:i + 30]) > 5]
    tool_json = [json.dumps({"name": f"tool_{i}", "arguments": {"city": city, "days": i, "units": "metric"}})
                 for i, city in enumerate(["Paris", "São Paulo", "Reykjavík", "New York", "Tokyo"])]
    # Compact JSON, as a model writes arguments and structured output: the chart's dashboard and schema.
    documents = [json.dumps(json.loads((ROOT / "charts" / "gptomni" / name).read_text()))
                 for name in ("files/grafana-dashboard.json", "values.schema.json")]
    json_chunks = [doc[i:i + 400] for doc in documents for i in range(0, len(doc), 400)]
    return {"english prose (docs)": prose[:400], "python code": code[:400], "tool-call JSON": tool_json,
            "JSON documents": json_chunks, **OTHER_SCRIPTS}


def real_counts(js_tiktoken: Path, texts: list[str], encoding: str) -> list[int]:
    script = (f"const {{Tiktoken}} = require({json.dumps(str(js_tiktoken / 'dist' / 'lite.cjs'))});"
              f"const ranks = require({json.dumps(str(js_tiktoken / 'dist' / 'ranks' / f'{encoding}.cjs'))});"
              "const enc = new Tiktoken(ranks.default || ranks);"
              "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(texts.map(t => enc.encode(t).length)));")
    done = subprocess.run(["node", "-e", script], input=json.dumps(texts), capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def measure(js_tiktoken: Path, texts: list[str], encoding: str) -> dict[str, float]:
    """One row: real tokens, the estimate's total, and the spread of estimate / real."""
    estimates = [estimate_tokens(text) for text in texts]
    real = real_counts(js_tiktoken, texts, encoding)
    ratios = sorted(e / r for e, r in zip(estimates, real, strict=True) if r)
    # p10 / p90 where there are enough samples for them, else the lowest and highest.
    deciles = statistics.quantiles(ratios, n=10) if len(ratios) >= 10 else [ratios[0], ratios[-1]]
    return {"samples": len(texts), "real": sum(real), "estimate": sum(estimates),
            "total": sum(estimates) / sum(real), "p10": deciles[0], "median": statistics.median(ratios),
            "p90": deciles[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--js-tiktoken", type=Path, default=JS_TIKTOKEN, help=f"the js-tiktoken package (default {JS_TIKTOKEN})")
    args = parser.parse_args()
    print(f"{'kind':>22} {'encoding':>12} {'samples':>7} {'real':>7} {'estimate':>8} {'total':>7} "
          f"{'p10':>6} {'median':>6} {'p90':>6}   (estimate / real; under 10 samples: lowest, highest)")
    for kind, texts in samples().items():
        for encoding in ENCODINGS:
            r = measure(args.js_tiktoken, texts, encoding)
            print(f"{kind:>22} {encoding:>12} {r['samples']:>7} {r['real']:>7} {r['estimate']:>8} "
                  f"{r['total']:>7.2f} {r['p10']:>6.2f} {r['median']:>6.2f} {r['p90']:>6.2f}")


if __name__ == "__main__":
    main()
