"""Markdown and HTML from the same Section objects."""

from __future__ import annotations

import html

import pandas as pd
from mlflow.entities import Run

from pipeline.digest import first_sentence
from pipeline.report.data import Section


def lead(answer: str, start: str, end: str | None = None) -> str:
    """The answer with its first sentence (the sweep's digest line) set in bold."""
    head = first_sentence(answer)
    if not head or not answer.startswith(head):
        return answer
    return f"{start}{head}{start if end is None else end}{answer[len(head) :]}"


def hint(s: Section) -> str:
    return f"No runs for this question in this sweep: run `make sweep SWEEP={s.preset}`."


def tables_of(s: Section) -> list[tuple[str, pd.DataFrame]]:
    return ([("", s.table)] if s.table is not None else []) + s.tables


def to_markdown(parent: Run, sections: list[Section]) -> str:
    lines = [f"# FAQ report: sweep `{parent.info.run_name}` ({parent.info.run_id})", ""]
    for i, s in enumerate(sections, 1):
        lines += [f"## {i}. {s.title}", "", f"*{s.question}*", ""]
        if s.missing:
            lines += [hint(s), ""]
            continue
        for caption, table in tables_of(s):
            flat = isinstance(table.index, pd.RangeIndex) or table.index.name is None
            lines += [f"*{caption}*", ""] if caption else []
            lines += [table.to_markdown(floatfmt=".3g", index=not flat), ""]
        if s.code:
            lines += ["```python", s.code, "```", ""]
        if s.figure:
            lines += [f"![{s.title}]({s.figure})", ""]
        lines += [f"**Answer.** {lead(s.answer, '**')}", ""]
    return "\n".join(lines)


def to_html(parent: Run, sections: list[Section]) -> str:
    body = [f"<h1>FAQ report: sweep {html.escape(parent.info.run_name)}</h1>"]
    for i, s in enumerate(sections, 1):
        body += [
            f"<h2>{i}. {html.escape(s.title)}</h2>",
            f"<p><em>{html.escape(s.question)}</em></p>",
        ]
        if s.missing:
            body.append(f"<p>{html.escape(hint(s))}</p>")
            continue
        for caption, table in tables_of(s):
            flat = isinstance(table.index, pd.RangeIndex) or table.index.name is None
            if caption:
                body.append(f"<p><em>{html.escape(caption)}</em></p>")
            body.append(table.to_html(float_format=lambda x: f"{x:.3g}", index=not flat))
        if s.code:
            body.append(f"<pre><code>{html.escape(s.code)}</code></pre>")
        if s.figure:
            body.append(f'<img src="{s.figure}" alt="{html.escape(s.title)}">')
        answer = lead(html.escape(s.answer, quote=False), "<strong>", "</strong>")
        body.append(f"<p><strong>Answer.</strong> {answer}</p>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>FAQ report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
