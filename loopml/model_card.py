"""One self-contained HTML model card per registered version.

Everything is inline (figures as base64 PNG, CSS in a ``<style>`` block, no script, no CDN), so
the page reads the same from the MLflow UI, an e-mail attachment or a laptop offline. Sections:
intended use, data profile, training data, search, held-out metrics, slices, fairness,
explanations and the gate decision; a section with nothing to show says why.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from loopml.config import ProjectConfig
from loopml.figures import png_bytes
from loopml.label_rule import is_label

SECTIONS = (
    ("intended-use", "Intended use"),
    ("data-profile", "Data profile"),
    ("training-data", "Training data"),
    ("search", "Search"),
    ("metrics", "Held-out metrics"),
    ("slices", "Error analysis by slice"),
    ("fairness", "Fairness audit"),
    ("explanations", "Explanations"),
    ("gate", "Gate decision"),
)
PROFILE_COLUMNS = 12  # histograms drawn for at most this many features (most important first)
PARTIAL_DEPENDENCE_COLUMNS = 3


@dataclass
class ModelCardContent:
    """What a model card shows; each part comes from the training run or the documentation step."""

    config: ProjectConfig
    version: str
    run_id: str
    family: str
    params: dict[str, Any]
    train: pd.DataFrame
    test_metrics: dict[str, float]
    cv_metrics: dict[str, float]
    data_hash: str
    suite_hash: str
    search: dict[str, Any]
    slices: dict[str, Any]
    fairness: dict[str, Any] | None
    importances: dict[str, float]
    decision: dict[str, Any] | None
    figures: dict[str, Figure] = field(default_factory=dict)


def figure_data_uri(figure: Figure) -> str:
    """A figure as an inline ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(figure)).decode("ascii")


def target_association(train: pd.DataFrame, config: ProjectConfig) -> dict[str, float]:
    """Each feature's correlation with the target, as a number in [-1, 1] (|.| for categories).

    Numeric features: Pearson correlation with the target (the positive class as 1 for a binary
    target). Categorical features: the correlation ratio (how much of the target's variance the
    categories explain, square-rooted). Multiclass targets: categorical association only.
    """
    if config.task == "regression":
        target = pd.to_numeric(train[config.target], errors="coerce")
    elif config.is_binary:
        target = pd.Series(
            is_label(train[config.target].to_numpy(), config.positive_label).astype(float),
            index=train.index,
        )
    else:
        target = pd.Series(pd.factorize(train[config.target])[0].astype(float), index=train.index)
    result = {}
    for column in config.columns.numeric:
        values = pd.to_numeric(train[column], errors="coerce")
        if config.task == "classification" and not config.is_binary:
            continue
        if values.std() > 0 and target.std() > 0:
            result[column] = float(values.corr(target))
    total = float(((target - target.mean()) ** 2).sum())
    for column in config.columns.categorical:
        groups = target.groupby(train[column].astype(str))
        between = float((groups.count() * (groups.mean() - target.mean()) ** 2).sum())
        result[column] = float(np.sqrt(between / total)) if total > 0 else 0.0
    return dict(sorted(result.items(), key=lambda item: -abs(item[1])))


def profile_figure(train: pd.DataFrame, columns: list[str], config: ProjectConfig) -> Figure:
    """Histograms (numeric) and bar charts of the most frequent values (categorical)."""
    shown = columns[:PROFILE_COLUMNS]
    width = 4
    height = max(1, int(np.ceil(len(shown) / width)))
    figure = Figure(figsize=(3.2 * width, 2.4 * height))
    for index, column in enumerate(shown):
        axes = figure.add_subplot(height, width, index + 1)
        if column in config.columns.numeric:
            values = pd.to_numeric(train[column], errors="coerce").dropna()
            axes.hist(values, bins=20, color="#4c72b0")
        else:
            counts = train[column].astype(str).value_counts().head(8)
            axes.barh([text[:18] for text in counts.index[::-1]], counts.values[::-1])
            axes.tick_params(axis="y", labelsize=7)
        axes.set_title(column, fontsize=9)
    figure.set_layout_engine("tight")  # laid out when drawn (maybe by the figure worker)
    return figure


def card_profile_figure(
    train: pd.DataFrame, importances: dict[str, float], config: ProjectConfig
) -> Figure:
    """The card's data profile: the features' distributions, the most important first."""
    ordered = [c for c in importances if c in config.columns.features] or list(
        config.columns.features
    )
    return profile_figure(train, ordered, config)


def build_model_card(
    content: ModelCardContent,
    *,
    partial_dependence: Figure | None,
    profile: Figure | None = None,
) -> str:
    """The model card as one HTML document (``profile``: :func:`card_profile_figure`, made
    here when not given)."""
    config = content.config
    if profile is None:
        profile = card_profile_figure(content.train, content.importances, config)
    parts = {
        "intended-use": _intended_use(config),
        "data-profile": _data_profile(content, profile),
        "training-data": _table(
            [
                {"item": "training rows", "value": len(content.train)},
                {"item": "training data hash", "value": content.data_hash},
                {"item": "suite hash", "value": content.suite_hash},
                {"item": "target", "value": config.target},
                {"item": "task", "value": config.task},
                {"item": "MLflow run", "value": content.run_id},
            ]
        ),
        "search": _search(content),
        "metrics": _metrics(content),
        "slices": _slices(content.slices),
        "fairness": _fairness(content.fairness, config),
        "explanations": _explanations(content.importances, partial_dependence),
        "gate": _gate(content.decision),
    }
    body = "\n".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>\n{parts[key]}\n</section>'
        for key, title in SECTIONS
    )
    title = f"{config.name} v{content.version} model card"
    navigation = " · ".join(f'<a href="#{key}">{html.escape(text)}</a>' for key, text in SECTIONS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="lead">{html.escape(content.family)} '
        f"{config.task} model predicting <code>{html.escape(config.target)}</code>.</p>"
        f"<nav>{navigation}</nav>"
        f"{body}</body></html>\n"
    )


def _intended_use(config: ProjectConfig) -> str:
    if config.intended_use:
        return f"<p>{html.escape(config.intended_use)}</p>"
    return (
        '<p class="missing">Not stated. Write what the model is for (and not for) in '
        f"<code>intended_use</code> of <code>configs/{html.escape(config.name)}.yaml</code>.</p>"
    )


def _data_profile(content: ModelCardContent, figure: Figure) -> str:
    config = content.config
    association = target_association(content.train, config)
    rows = [
        {"column": column, "kind": _kind(column, config), "association with target": value}
        for column, value in association.items()
    ]
    return (
        f'<img alt="feature distributions" src="{figure_data_uri(figure)}">'
        "<h3>Correlation with the target</h3>" + _table(rows)
    )


def _kind(column: str, config: ProjectConfig) -> str:
    return "numeric (Pearson)" if column in config.columns.numeric else "categorical (ratio)"


def _search(content: ModelCardContent) -> str:
    search = content.search
    rows = [
        {"item": "chosen family", "value": content.family},
        {"item": "trials", "value": search.get("n_trials")},
        {"item": "pruned", "value": search.get("n_pruned")},
        *({"item": name, "value": value} for name, value in content.cv_metrics.items()),
        *({"item": f"param {name}", "value": value} for name, value in content.params.items()),
    ]
    families = [
        {"family": family, f"best cv {search.get('metric', '')}": score}
        for family, score in sorted((search.get("per_family_best") or {}).items())
    ]
    return _table(rows) + ("<h3>Best per family</h3>" + _table(families) if families else "")


def _metrics(content: ModelCardContent) -> str:
    rows = [
        {"metric": name, "value": value} for name, value in sorted(content.test_metrics.items())
    ]
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="{figure_data_uri(figure)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, figure in content.figures.items()
    )
    return _table(rows) + (f'<div class="figures">{images}</div>' if images else "")


def _slices(analysis: dict[str, Any]) -> str:
    ranked = [row for row in analysis["slices"] if row["ranked"]][:15]
    small = [row for row in analysis["slices"] if not row["ranked"]]
    rows = [
        {
            "column": row["column"],
            "slice": row["slice"],
            "rows": row["rows"],
            analysis["metric"]: row["value"],
            "95% interval": f"{row['low']:.3f} – {row['high']:.3f}",
            "worse with confidence": "yes" if row["worse_with_confidence"] else "",
        }
        for row in ranked
    ]
    note = (
        f"<p>{analysis['metric']} on {analysis['rows']} held-out rows: "
        f"{analysis['overall']:.4f} overall. Slices worse than the whole with 95% confidence "
        "come first.</p>"
    )
    if small:
        listed = ", ".join(f"{row['column']}={row['slice']} ({row['rows']})" for row in small[:20])
        note_small = (
            f"<p>Too few rows to rank (under {analysis['min_rows']}): {html.escape(listed)}.</p>"
        )
    else:
        note_small = ""
    return note + _table(rows) + note_small


def _fairness(audit: dict[str, Any] | None, config: ProjectConfig) -> str:
    if not audit or not audit.get("columns"):
        return (
            '<p class="missing">No sensitive columns configured: list them in '
            f"<code>sensitive_columns</code> of <code>configs/{html.escape(config.name)}.yaml"
            "</code> to audit the model across their groups.</p>"
        )
    parts = []
    for column, entry in audit["columns"].items():
        differences = ", ".join(
            f"{name} = {value:.4f}" if value is not None else f"{name} = n/a"
            for name, value in entry["differences"].items()
        )
        parts.append(
            f"<h3>{html.escape(column)}</h3><p>{html.escape(differences)}</p>"
            + _table(entry["groups"])
        )
    return "".join(parts)


def _explanations(importances: dict[str, float], partial_dependence: Figure | None) -> str:
    rows = [
        {"column": column, "permutation importance": value} for column, value in importances.items()
    ]
    image = (
        f'<h3>Partial dependence of the top features</h3><img alt="partial dependence" '
        f'src="{figure_data_uri(partial_dependence)}">'
        if partial_dependence is not None
        else ""
    )
    return "<h3>Global importance (held-out permutation)</h3>" + _table(rows) + image


def _gate(decision: dict[str, Any] | None) -> str:
    if not decision:
        return '<p class="missing">No gate decision was recorded.</p>'
    verdict = "promoted to champion" if decision.get("promote") else "kept as challenger"
    rows = [
        {"comparison": name, **{k: v for k, v in values.items() if k != "reason"}}
        for name, values in (decision.get("comparisons") or {}).items()
    ]
    return (
        f"<p><strong>{verdict}</strong>: {html.escape(str(decision.get('reason', '')))}</p>"
        + _table(rows)
    )


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="missing">(none)</p>'
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(column))}</td>" for column in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return html.escape("" if value is None else str(value))


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
nav{font-size:.9em;margin:1em 0}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f3f3}
img{max-width:100%}.figures{display:flex;flex-wrap:wrap;gap:1em}.figures img{max-width:480px}
.missing{color:#a15c00}code{background:#f3f3f3;padding:0 3px}
"""
