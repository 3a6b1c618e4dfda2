"""`service build-index --negatives FILE`, as a user runs it: the judged negatives train (the build
report and the console say how many were used and why the others were not), and a file that cannot
be used is refused before any training, with its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main


def _argv(tiny_sample: Path, tiny_build, art: Path) -> list[str]:
    cache = tiny_build.path.parent.parent.parent / "image-cache"  # the session build's features
    return ["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(art),
            "--batch-size", "64", "--device", "cpu", "--image-cache", str(cache), "--no-progress", "--no-publish",
            "--view-vectors", "off", "--epochs", "1"]


def _negatives(tiny_sample: Path, out: Path) -> tuple[Path, int]:
    """For each of the first 20 interaction queries, a listing it never interacted with; plus one
    row naming a listing the catalog lacks and one for a query nobody searched."""
    rows = [json.loads(x) for x in (tiny_sample / "interactions.jsonl").read_text().splitlines()]
    title = {r["id"]: r["title"] for r in map(json.loads, (tiny_sample / "catalog.jsonl").read_text().splitlines())}
    ids = list(title)
    by_query: dict[str, set[str]] = {}
    for r in rows:
        by_query.setdefault(r["query"], set()).add(r["item_id"])
    negs = []
    for q, clicked in list(by_query.items())[:20]:  # (a listing titled like a clicked one would not train)
        negs.append({"query": q, "item_id": next(i for i in ids if title[i] not in {title[c] for c in clicked})})
    negs += [{"query": rows[0]["query"], "item_id": "no-such-listing"}, {"query": "nobody searched this", "item_id": ids[0]}]
    out.write_text("".join(json.dumps(r) + "\n" for r in negs))
    return out, 20


@pytest.mark.slow
def test_negatives_train_and_are_reported(tiny_sample: Path, tiny_build, tmp_path: Path, capsys) -> None:
    path, n = _negatives(tiny_sample, tmp_path / "negatives.jsonl")
    art = tmp_path / "a"
    argv = [*_argv(tiny_sample, tiny_build, art), "--interactions", str(tiny_sample / "interactions.jsonl"),
            "--negatives", str(path), "--version", "neg"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    report = json.loads((art / "versions" / "neg" / "report.json").read_text())
    used = report["training"]["negatives"]
    assert used["used"] == n and used["queries"] == n and used["query_not_trained"] == 1, used
    assert report["inputs"]["negatives"]["unknown_items"] == 1
    epoch = report["training"]["history"]["epochs"][0]
    assert epoch["judged_negatives"] > 0  # pairs of those queries drew one this epoch
    assert f"negatives: {n} of {n + 2} rows train, for {n} queries (not used: 1 name no listing of the catalog, " \
           "1 a query not trained on" in err, err
    assert json.loads((tiny_build.path / "report.json").read_text())["training"]["negatives"] is None  # none given


def test_negatives_without_interactions_are_refused(tiny_sample: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "negatives.jsonl"
    path.write_text(json.dumps({"query": "mug", "item_id": "x"}) + "\n")
    argv = ["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(tmp_path / "a"),
            "--negatives", str(path), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert f"--negatives {path}: needs --interactions" in capsys.readouterr().err


def test_a_bad_negatives_row_names_file_line_and_field(tiny_sample: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "negatives.jsonl"
    path.write_text(json.dumps({"query": "mug", "item_id": "x"}) + "\n" + json.dumps({"item_id": "x"}) + "\n")
    argv = ["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(tmp_path / "a"),
            "--interactions", str(tiny_sample / "interactions.jsonl"), "--negatives", str(path), "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 2
    assert f"{path}:2: query: is missing" in capsys.readouterr().err
    assert not (tmp_path / "a" / "versions").exists() or not any((tmp_path / "a" / "versions").iterdir())


def test_negatives_are_refused_under_torchrun_before_any_work(tiny_sample: Path, tmp_path: Path) -> None:
    from model.train.distributed import DistContext
    from service.build.pipeline import build_options
    from service.build.stages import train_run

    opts = build_options(catalog=tiny_sample / "catalog.jsonl", artifacts=tmp_path / "a",
                         interactions=tiny_sample / "interactions.jsonl", negatives=tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="--negatives: not supported under torchrun yet"):
        train_run(opts, run="r", dist=DistContext(rank=0, world=2))  # no process group: it never got that far
    assert not (tmp_path / "a").exists()
