"""Dense, lexical and hybrid retrieval side by side on homedepot and the sample catalog; the
fusion is chosen on VALIDATION queries of both, reported on their TEST queries.

    service sample-catalog --out var/sample
    service build-index --catalog var/sample/catalog.jsonl --interactions var/sample/interactions.jsonl \
        --judgments var/sample/judgments.jsonl --artifacts var/hybrid/artifacts
    nice -n 19 .venv/bin/python -m bench.realdata.hybrid [--version ft_epochs1] \
        [--sample var/sample --sample-artifacts var/hybrid/artifacts]

Reuses bench/realdata/homedepot.py's split and its trained version (var/realdata/homedepot/
artifacts/versions/<version>, built by `homedepot.py --steps train`; no retraining here). The
lexical index is index/lexical.py built over `service.build.pipeline.lexical_documents` of the catalog
(exactly what `service build-index` would put in the version). Every system answers a request for
K = 100 results the way the engine does (index/rank_fusion.py `hybrid_one`, lists cut to
max(candidates, K)), so the headline metrics are nDCG@10, R@10, R@100 and MRR@10.

Splits: homedepot as bench/realdata/split.py (test 20%; validation = 10% of the rest); the
sample's 300 judged queries halved by the same hash (v < 0.5 test, the rest validation; written to
var/hybrid/sample_split/ so `service eval --judgments` can score the same halves). Fusion settings
(method, RRF k, weights, candidates) are chosen on the two validation slices: the best worst-case
nDCG@10 gain over the better single system, among settings whose R@100 reaches both single
systems' on both catalogs; then reported once on the test slices, with bootstrap 95% CIs and
paired differences. The identifier-like homedepot test queries (`identifier_like`) are reported
separately.

Reads ../shared/data/homedepot; writes var/realdata/homedepot/hybrid.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import invocation, machine
from bench.realdata.common import markdown_table, setup_logging, show_command, with_ci
from bench.realdata.homedepot import data_paths

K = 100
HEADLINE = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
UNITS = ("in", "inch", "inches", "ft", "feet", "foot", "cm", "mm", "m", "gal", "gallon", "gallons", "lb", "lbs",
         "oz", "qt", "v", "volt", "volts", "w", "watt", "watts", "amp", "amps", "btu", "sq", "yd", "mil",
         "gauge", "ga", "psi", "cu", "l", "ml", "kw", "hp", "x")
_MIXED = re.compile(r"(?=[a-z0-9]*[a-z])(?=[a-z0-9]*[0-9])[a-z0-9]+")
_NUMBER_UNIT = re.compile(r"\b\d+(?:[./]\d+)?\s*(?:" + "|".join(UNITS) + r")\b")
_LONG_NUMBER = re.compile(r"\b\d{4,}\b")


def identifier_like(query: str) -> bool:
    """The rule for the identifier-like subset: the lowercased query has a token of letters AND
    digits ("g991b", "2x4", "rtx4070"), a number followed by a unit ("1/2 in", "90 cm", "12 volt",
    "4 x 8"), or a number of 4+ digits (a model or part number)."""
    q = query.lower()
    tokens = re.findall(r"[a-z0-9]+", q)
    return any(_MIXED.fullmatch(t) for t in tokens) or bool(_NUMBER_UNIT.search(q) or _LONG_NUMBER.search(q))


def grid() -> list[Any]:
    from index.rank_fusion import FusionSpec

    specs = []
    for cand in (100, 200):
        for k in (10, 30, 60, 100):
            for wd in (0.5, 0.75, 1.0, 1.5):
                specs.append(FusionSpec("rrf", k, wd, 1.0, cand))
        for wd in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
            specs.append(FusionSpec("weighted", 60, wd, round(1 - wd, 2), cand))
    return specs


def name(spec: Any) -> str:
    boost = "" if spec.identifier_boost else " no-boost"
    if spec.method == "rrf":
        return f"rrf k={spec.rrf_k} w_dense={spec.dense_weight:g} cand={spec.candidates}{boost}"
    return f"weighted w_dense={spec.dense_weight:g} w_lex={spec.lexical_weight:g} cand={spec.candidates}{boost}"


class Prepared:
    """Per query: the dense and lexical top-D rows and both exact scores of every row in either."""

    def __init__(self, dense_rows: np.ndarray, lex_rows: list[np.ndarray], dense_s: list[dict[int, float]],
                 lex_s: list[dict[int, float]], exact: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.dense_rows, self.lex_rows, self.dense_s, self.lex_s = dense_rows, lex_rows, dense_s, lex_s
        self.exact = exact  # per query: the listings holding its identifiers (rows, counts), as the engine finds them


def prepare(searcher: Any, lexical: Any, queries: list[str], qvecs: np.ndarray, depth: int) -> Prepared:
    from index.lexical import top_k

    vectors = np.asarray(searcher.vectors, np.float32)  # (n, d)
    res = searcher.search(qvecs, depth)
    lex_rows, dense_s, lex_s, exact = [], [], [], []
    for j, q in enumerate(queries):
        full = lexical.scores(q)  # (n,)
        rows, _ = top_k(full, depth)
        lex_rows.append(rows)
        exact.append(lexical.identifier_matches(q))
        union = np.unique(np.concatenate([res.rows[j][res.rows[j] >= 0], rows, exact[-1][0]]))
        dense_s.append(dict(zip(union.tolist(), (vectors[union] @ qvecs[j]).tolist(), strict=True)))
        lex_s.append(dict(zip(union.tolist(), full[union].tolist(), strict=True)))
    return Prepared(res.rows, lex_rows, dense_s, lex_s, exact)


def rank(p: Prepared, ids: list[str], system: Any) -> list[list[str]]:
    """`system`: "dense", "lexical" or a FusionSpec, ranked as the engine and `service eval` rank
    it: with the exact-identifier boost when the spec has it on (index/rank_fusion.py `boost`)."""
    from index.rank_fusion import hybrid_one

    out = []
    for j in range(len(p.lex_rows)):
        if system == "dense":
            rows = p.dense_rows[j][:K]
        elif system == "lexical":
            rows = p.lex_rows[j][:K]
        else:
            ds, ls = p.dense_s[j], p.lex_s[j]
            rows, _ = hybrid_one(p.dense_rows[j], p.lex_rows[j], system, system.depth(K, 0),
                                 lambda rs, ds=ds: np.array([ds[int(r)] for r in rs]),
                                 lambda rs, ls=ls: np.array([ls[int(r)] for r in rs]),
                                 exact=p.exact[j] if system.identifier_boost else None)
            rows = rows[:K]
        out.append([ids[r] for r in rows if r >= 0])
    return out


def encode_cached(encoder: Any, queries: list[str], cache: Path, tag: str) -> np.ndarray:
    digest = hashlib.sha256(("\n".join(queries) + tag).encode()).hexdigest()[:12]
    path = cache / f"hybrid-qvecs-{digest}.npy"
    if path.is_file():
        return np.load(path)
    q = encoder.encode(queries)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, q)
    return q


class Catalog:
    """One catalog's version, split, and prepared candidate lists."""

    def __init__(self, label: str, ids: list[str], splits: dict[str, tuple[Any, list[str], Prepared]],
                 version: str) -> None:
        self.label, self.ids, self.splits, self.version = label, ids, splits, version


def open_catalog(label: str, folder: Path, listings: list[Any], judgments: dict[str, Path], cache: Path,
                 depth: int, min_relevant: float | None) -> Catalog:
    """The version in `folder` with the lexical index `build-index` writes (built here from the same
    documents when the version predates it), and each judged split prepared to `depth`."""
    from index.build import load_index
    from index.lexical import META, LexicalIndex
    from index.search import FaissCpuSearcher
    from index.store.artifacts import read_manifest
    from index.store.listings import ListingStore
    from model.data.interactions import load_judgments
    from model.runtime.query_encoder import QueryEncoder
    from service.build.pipeline import lexical_documents

    manifest = read_manifest(folder)
    ids = ListingStore(folder / "listings.sqlite").ids()
    if [x.id for x in listings] != ids:
        raise SystemExit(f"{folder}: its listings are not the catalog's, in order")
    lexical = (LexicalIndex.load(folder) if (folder / META).is_file()
               else LexicalIndex.build(lexical_documents(listings)))
    searcher = FaissCpuSearcher(load_index(str(folder / "index.faiss")), np.load(folder / "vectors.npy"),
                                manifest.get("index_params"))
    encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", "cpu")
    splits = {}
    for split, path in judgments.items():
        labels = load_judgments(path, set(ids), min_relevant=min_relevant)
        queries = list(labels.queries)
        qvecs = encode_cached(encoder, queries, cache, f"{folder.name}:{manifest['model_digest']}")
        splits[split] = (labels, queries, prepare(searcher, lexical, queries, qvecs, depth))
        print(f"[{label} {split}] {len(queries)} queries prepared", flush=True)
    return Catalog(label, ids, splits, folder.name)


def split_sample(judgments: Path, out: Path) -> dict[str, Path]:
    """The sample's judged queries halved by bench/realdata/split.py's hash of the normalised query,
    hex digits [8:16] (v < 0.5: test, else validation; digits [0:8] already chose these queries as
    the sample's test queries), written as two judgments files `service eval` can read."""
    from bench.realdata.split import hash_unit

    out.mkdir(parents=True, exist_ok=True)
    files = {"val": out / "val_judgments.jsonl", "test": out / "test_judgments.jsonl"}
    lines: dict[str, list[str]] = {"val": [], "test": []}
    for line in judgments.read_text().splitlines():
        if line.strip():
            lines["test" if hash_unit(json.loads(line)["query"], 8) < 0.5 else "val"].append(line)
    for split, path in files.items():
        path.write_text("\n".join(lines[split]) + "\n")
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="ft_epochs1", help="a version built by homedepot.py (default ft_epochs1)")
    ap.add_argument("--sample", type=Path, default=Path("var/sample"), help="`service sample-catalog` output")
    ap.add_argument("--sample-artifacts", type=Path, default=Path("var/hybrid/artifacts"),
                    help="a `service build-index` of the sample (its current version is used)")
    ap.add_argument("--homedepot-only", action="store_true",
                    help="leave the sample out (the fusion is then chosen on homedepot's validation alone)")
    a = ap.parse_args(argv)
    setup_logging()
    show_command(invocation())
    from bench.realdata.modeleval import version_dir
    from bench.realdata.scoring import paired_difference, score_rankings
    from bench.realdata.split import MIN_RELEVANT
    from index.rank_fusion import FusionSpec
    from index.store.artifacts import ArtifactStore
    from model.data.catalog import load_catalog
    from service.build.evaluation import evaluate_rankings

    p = data_paths()
    specs = grid()
    depth = max(s.depth(K, 0) for s in specs)
    hd = open_catalog("homedepot", version_dir(p["artifacts"], a.version), load_catalog(p["catalog"]).listings,
                      {s: p["split"] / f"{s}_judgments.jsonl" for s in ("val", "test")}, p["cache"], depth,
                      MIN_RELEVANT)
    catalogs, sample_split = [hd], {}
    if not a.homedepot_only:
        store = ArtifactStore(a.sample_artifacts)
        sample_split = split_sample(a.sample / "judgments.jsonl", a.sample_artifacts.parent / "sample_split")
        catalogs.append(open_catalog("sample", store.version_dir(store.current_version() or ""),
                                     load_catalog(a.sample / "catalog.jsonl").listings, sample_split,
                                     a.sample_artifacts.parent / "cache", depth, None))

    # --- choose on the validation slices of BOTH catalogs: the fusion with the best worst-case
    # nDCG@10 gain over the better single system, among those whose R@100 reaches both single
    # systems' on both catalogs (all of them if none does)
    singles, grid_rows = {}, []
    for c in catalogs:
        labels, queries, prep = c.splits["val"]
        singles[c.label] = {s: evaluate_rankings(rank(prep, c.ids, s), queries, labels) for s in ("dense", "lexical")}
    for spec in specs:
        row: dict[str, Any] = {"spec": name(spec)}
        gains, ok = [], True
        for c in catalogs:
            labels, queries, prep = c.splits["val"]
            m = evaluate_rankings(rank(prep, c.ids, spec), queries, labels)
            best = singles[c.label]
            gains.append(m["ndcg@10"] - max(best["dense"]["ndcg@10"], best["lexical"]["ndcg@10"]))
            ok &= m["recall@100"] >= max(best["dense"]["recall@100"], best["lexical"]["recall@100"])
            row[c.label] = {h: m[h] for h in HEADLINE}
        row["min_ndcg_gain"], row["recall_ok"] = min(gains), ok
        grid_rows.append((spec, row))
    pool = [r for r in grid_rows if r[1]["recall_ok"]] or grid_rows
    chosen = {"hybrid (chosen on val)": max(pool, key=lambda r: r[1]["min_ndcg_gain"])[0],
              "best on homedepot val only": max(grid_rows, key=lambda r: r[1]["homedepot"]["ndcg@10"])[0],
              "rrf k=60, equal weights (textbook)": FusionSpec("rrf", 60, 1.0, 1.0, 100)}
    served = FusionSpec()  # the service's default fusion (identifier boost on), and without the boost
    chosen |= {"served default (identifier boost)": served,
               "served default, no identifier boost": dataclasses.replace(served, identifier_boost=False)}

    # --- report on the test slices (+ homedepot's identifier-like subset)
    out: dict[str, Any] = {"versions": {c.label: c.version for c in catalogs}, "k": K, "machine": machine(),
                           "singles_val": singles, "grid": [r for _, r in grid_rows],
                           "chosen": {k: name(v) for k, v in chosen.items()}, "sample_split": {
                               k: str(v) for k, v in sample_split.items()}}
    tables: dict[str, Any] = {}
    for c in catalogs:
        systems: dict[str, Any] = {"dense": "dense", "lexical (BM25)": "lexical", **chosen}
        for split in ("test", "val"):
            labels, queries, prep = c.splits[split]
            subsets = {"all": list(range(len(queries)))}
            if split == "test" and c.label == "homedepot":
                subsets["identifier-like"] = [i for i, q in enumerate(queries) if identifier_like(q)]
            for subset, idx in subsets.items():
                qs = [queries[i] for i in idx]
                res = {}
                for label, system in systems.items():
                    ranked = rank(prep, c.ids, system)
                    res[label] = score_rankings([ranked[i] for i in idx], qs, labels)
                tables[f"{c.label} {split}/{subset}"] = res
    out["results"] = {t: {s: {h: m[h] for h in (*HEADLINE, "n_queries")} | {"ci": {h: m["ci"][h] for h in HEADLINE}}
                          for s, m in r.items()} for t, r in tables.items()}
    md = [f"Dense: {', '.join(f'{c.label} `{c.version}`' for c in catalogs)}; lexical: BM25 over `lexical_documents`; "
          f"K = {K}. Chosen on the validation slices: {name(chosen['hybrid (chosen on val)'])}.", ""]
    header = ["system"] + [f"{h} [95% CI]" for h in HEADLINE] + ["queries"]
    for t, r in tables.items():
        rows = [[s] + [with_ci(m, h) for h in HEADLINE] + [m["n_queries"]] for s, m in r.items()]
        md += [f"#### {t}", "", markdown_table(header, rows), ""]
        if " test/" in t:
            hyb = r["hybrid (chosen on val)"]["per_query"]
            diffs = []
            for label in ("dense", "lexical (BM25)"):
                cells = []
                for h in HEADLINE:
                    d = paired_difference(hyb[h], r[label]["per_query"][h])
                    cells.append(f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
                diffs.append([f"hybrid minus {label}"] + cells)
            on, off = r["served default (identifier boost)"]["per_query"], r["served default, no identifier boost"]["per_query"]
            cells = []
            for h in HEADLINE:
                d = paired_difference(on[h], off[h])
                cells.append(f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
            diffs.append(["served default: identifier boost minus none"] + cells)
            md += [markdown_table(["paired, 95% CI"] + list(HEADLINE), diffs), ""]
    text = "\n".join(md) + "\n"
    out["markdown"] = text
    p["out"].mkdir(parents=True, exist_ok=True)
    (p["out"] / "hybrid.json").write_text(json.dumps(out, indent=1, default=float))
    (p["out"] / "hybrid.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
