"""The benchmark table: a Markdown file and an SVG plot, a deterministic function of the row JSONs in a result folder.

    hf-vq benchmark SPEC --table_only      # regenerate TABLE.md and plot.svg from row-*.json (and noise.json)

Differences between rows smaller than twice the noise (the standard deviation of a metric over the noise row's
seeds) are marked as no difference rather than ranked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLE = "TABLE.md"
PLOT = "plot.svg"


def load_rows(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The row results in spec order, and the noise result when there is one."""
    folder = Path(folder)
    rows = sorted((json.loads(p.read_text()) for p in sorted(folder.glob("row-*.json"))),
                  key=lambda r: (r["index"], r["row"]))
    noise_path = folder / "noise.json"
    return rows, json.loads(noise_path.read_text()) if noise_path.is_file() else None


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _noise_std(noise: dict[str, Any] | None, kind: str, metric: str) -> float | None:
    return ((noise or {}).get(kind) or {}).get(metric, {}).get("std")


def _ranked(rows: list[dict[str, Any]], kind: str, metric: str, noise: dict[str, Any] | None, lower_is_better: bool,
            digits: int = 3, scale: float = 1.0) -> list[str]:
    """Each row's value; the best in bold; rows within twice the noise of the best marked "≈" (no difference)."""
    values = [row[kind].get(metric) for row in rows]
    known = [v for v in values if v is not None]
    if not known:
        return ["-"] * len(rows)
    best = min(known) if lower_is_better else max(known)
    std = _noise_std(noise, kind, metric)
    cells = []
    for value in values:
        text = _fmt(value, digits, scale)
        if value is None:
            cells.append(text)
        elif value == best:
            cells.append(f"**{text}**")
        elif std is not None and abs(value - best) < 2 * std:
            cells.append(f"{text} ≈")
        else:
            cells.append(text)
    return cells


def render_table(rows: list[dict[str, Any]], noise: dict[str, Any] | None) -> str:
    """TABLE.md's text."""
    if not rows:
        return "# Benchmark\n\nNo finished rows yet.\n"
    first = rows[0]
    fd = first["feature_network"]["fd_metric"]
    budget = first["budget"]
    data = first["dataset"]
    lines = [
        f"# Benchmark `{first['spec']}`",
        "",
        f"Dataset `{data['name']}` at {data['resolution']} px: tokenizers and proposal networks train on "
        f"`{data['train_split']}`, every metric is measured on `{data['test_split']}`. "
        f"Feature network `{first['feature_network']['name']}` (sha256 {first['feature_network']['sha256'][:12]}...). "
        f"Seed {first['seed']}.",
        "",
        "Budget per row, in samples seen (batch size): "
        + ", ".join(f"{name} {budget[name]['samples']:,} ({budget[name]['batch_size']})"
                    for name in ("tokenizer", "ar", "nar"))
        + (f"; each training stage capped at {budget['max_minutes']} min" if budget.get("max_minutes") else "")
        + ". Two-stage tokenizers (VQ-KD) split the tokenizer budget between their stages.",
        "",
        f"| Tokenizer | Codes | Usage | Codebook PPL | PSNR | r{fd} | AR g{fd} | NAR g{fd} | AR PPL | AR acc | NAR acc "
        "| AR P / R | NAR P / R | Samples |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ar_fd = _ranked(rows, "ar", fd, noise, lower_is_better=True)
    nar_fd = _ranked(rows, "nar", fd, noise, lower_is_better=True)
    ar_acc = _ranked(rows, "ar", "class_accuracy", noise, lower_is_better=False, digits=1, scale=100)
    nar_acc = _ranked(rows, "nar", "class_accuracy", noise, lower_is_better=False, digits=1, scale=100)
    for i, row in enumerate(rows):
        tok = row["tokenizer"]
        usage = tok.get("codebook_usage") or []
        perplexity = tok.get("codebook_perplexity") or []
        ppl = (row["ar"].get("validation_perplexity") or {}).get("perplexity")
        name = row["row"] + ("" if row.get("matched", True) else " (unmatched)")
        grid = f"row-{row['slug']}"
        lines.append(
            f"| {name} | {row.get('codebooks') or '-'} | {' / '.join(f'{u * 100:.1f}%' for u in usage) or '-'} "
            f"| {' / '.join(f'{p:.0f}' for p in perplexity) or '-'} | {_fmt(tok.get('psnr_db'))} "
            f"| {_fmt(tok.get('r' + fd), 3)} | {ar_fd[i]} | {nar_fd[i]} | {_fmt(ppl)} | {ar_acc[i]} | {nar_acc[i]} "
            f"| {_fmt(row['ar'].get('precision'))} / {_fmt(row['ar'].get('recall'))} "
            f"| {_fmt(row['nar'].get('precision'))} / {_fmt(row['nar'].get('recall'))} "
            f"| [AR]({grid}-ar.png) [NAR]({grid}-nar.png) |"
        )
    lines += ["", _noise_text(noise, fd), "", "Minutes per stage on the machine that ran it:", ""]
    stage_names = []
    for row in rows:
        stage_names += [s for s in row["minutes"] if s not in stage_names]
    lines.append("| Tokenizer | " + " | ".join(stage_names) + " | total |")
    lines.append("|---" * (len(stage_names) + 2) + "|")
    for row in rows:
        cells = [_fmt(row["minutes"].get(s), 1) for s in stage_names]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + f" | {_fmt(row['total_minutes'], 1)} |")
    total = sum(row["total_minutes"] for row in rows)
    noun = "row" if len(rows) == 1 else "rows"
    lines += ["", f"Total: {total:.1f} min for {len(rows)} {noun}. Plot: [{PLOT}]({PLOT}).", ""]
    commits: dict[str, list[str]] = {}
    for row in rows:
        commits.setdefault(_short_commit(row.get("git_commit")), []).append(row["row"])
    code = "; ".join(f"`{c}` ({', '.join(names)})" for c, names in commits.items()) if len(commits) > 1 else \
        f"`{next(iter(commits))}` (every row)"
    lines += [f"hf_vq commit: {code}; the row JSONs hold the library versions.", ""]
    unmatched = [row["row"] for row in rows if not row.get("matched", True)]
    if unmatched:
        lines += [f"Unmatched (a training stage hit the minutes cap before its budget): {', '.join(unmatched)}.", ""]
    return "\n".join(lines)


def _noise_text(noise: dict[str, Any] | None, fd: str) -> str:
    if not noise:
        return ("Noise: not measured yet, so every difference is shown as measured; no ranking is implied. Bold marks "
                "the best value.")
    parts = []
    for kind in ("ar", "nar"):
        std = _noise_std(noise, kind, fd)
        acc = _noise_std(noise, kind, "class_accuracy")
        if std is not None:
            accuracy = f", class accuracy {acc * 100:.2f} points" if acc else ""
            parts.append(f"{kind.upper()} g{fd} {std:.3f}{accuracy}")
    return (f"Noise: the {noise['row']} row's AR and NAR stages (training and sampling) rerun with seeds "
            f"{noise['seeds']} on the same tokenizer; standard deviation {'; '.join(parts)}. Bold marks the best "
            "value; ≈ marks a value within twice that deviation of the best (no difference). The tokenizer's own "
            "training noise is not in this spread.")


def render_plot(rows: list[dict[str, Any]]) -> str:
    """An SVG scatter of the AR and NAR generation distances against codebook usage, one labelled point per row."""
    width, height, margin = 640, 400, 60
    points = []
    fd = rows[0]["feature_network"]["fd_metric"] if rows else ""
    for row in rows:
        usage = row["tokenizer"].get("codebook_usage") or [0.0]
        x = 100 * sum(usage) / len(usage)
        for kind in ("ar", "nar"):
            if row[kind].get(fd) is not None:
                points.append((x, row[kind][fd], kind, row["row"]))
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>\n'
    top = max(y for _, y, _, _ in points) * 1.15 or 1.0

    def sx(x: float) -> float:
        return margin + x / 100 * (width - 2 * margin)

    def sy(y: float) -> float:
        return height - margin - y / top * (height - 2 * margin)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
           f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">codebook usage (%, mean over '
           'sub-codebooks)</text>',
           f'<text x="15" y="{height / 2}" text-anchor="middle" transform="rotate(-90 15 {height / 2})">g{fd} '
           '(lower is better)</text>']
    for tick in range(0, 101, 20):
        out.append(f'<text x="{sx(tick):.1f}" y="{height - margin + 15}" text-anchor="middle">{tick}</text>')
    for i in range(5):
        value = top * i / 4
        out.append(f'<text x="{margin - 5}" y="{sy(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    colors = {"ar": "#1f77b4", "nar": "#d62728"}
    row_names = [name for _, _, _, name in points]
    for x, y, kind, name in points:
        if kind == "ar":
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colors[kind]}"/>')
        else:
            out.append(f'<rect x="{sx(x) - 4:.1f}" y="{sy(y) - 4:.1f}" width="8" height="8" fill="{colors[kind]}"/>')
        if kind == "ar" or row_names.count(name) == 1:  # one label per row, on the side with room for it
            side = ('end', -7) if x > 60 else ('start', 7)
            out.append(f'<text x="{sx(x) + side[1]:.1f}" y="{sy(y) - 6:.1f}" text-anchor="{side[0]}">'
                       f'{_escape(name)}</text>')
    out += [f'<circle cx="{width - margin - 90}" cy="{margin}" r="5" fill="{colors["ar"]}"/>',
            f'<text x="{width - margin - 80}" y="{margin + 4}">AR</text>',
            f'<rect x="{width - margin - 44}" y="{margin - 4}" width="8" height="8" fill="{colors["nar"]}"/>',
            f'<text x="{width - margin - 32}" y="{margin + 4}">NAR</text>', "</svg>"]
    return "\n".join(out) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_table(folder: str | Path) -> list[Path]:
    """Write TABLE.md and plot.svg from the folder's row JSONs; returns their paths."""
    from ..utils import write_file_atomic

    folder = Path(folder)
    rows, noise = load_rows(folder)
    written = []
    for name, text in ((TABLE, render_table(rows, noise)), (PLOT, render_plot(rows))):
        written.append(write_file_atomic(folder / name, lambda p, t=text: p.write_text(t)))
    return written


def _short_commit(commit: str | None) -> str:
    """A row's commit as the table shows it: 12 hex digits, keeping the mark of uncommitted changes."""
    if not commit:
        return "not recorded"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
