"""Search by photo through HTTP: POST /search/image on the sample catalog and on IKEA room photos.

    nice -n 10 .venv/bin/python -m bench.photo_search --artifacts var/photo/artifacts --sample var/sample \
        [--parts sample,latency,ikea] [--heads primary,other] [--limit N] [--out var/photo]

Starts `service serve` on a free loopback port for each served artifact (result cache off), talks
to it with the project's client (service/client.py `SearchClient`, multipart uploads, one request
at a time), and prints one JSON line per measurement (also written to OUT/results.json):

- sample: every listing's primary photo as the query, then every listing's first other photo,
  per photo head: Recall@1 / @10 of the listing itself among all listings (the photo is part of
  its listing's fused vector, as in any deployed index), p50 / p95 latency per request as the
  client saw it, and the server's mean photo_encode time per batch (from /metrics);
- latency: the same photo upscaled to a 12 MP phone-sized JPEG (4000 x 3000): p50 per request,
  decode included; and GET /search p50 over sample queries with the photo encoder loaded and
  with SERVICE_IMAGE_SEARCH=false, plus the server's RSS either way (what the encoder costs);
- ikea: each room photo of ../shared/data/ikea/rooms.jsonl as the query, Recall@10 / @50 and
  nDCG@10 of the listings shown in it (bootstrap 95% CIs), per head, against two versions:
  `ft` as bench/realdata/ikea.py builds it (the catalog as it is, so every room photo is also an
  other photo of the listings it shows: "as indexed"), and `ft` trained on the catalog WITHOUT a
  held-out half of the room photos (sha1 of the path), queried with that half only: photos the
  model and the index never saw. The frozen EfficientNet-Lite0 baseline (room photo vs catalogue
  photo, cosine) is scored on the same held-out half.

The IKEA data is read from ../shared/data/ikea (REALDATA_DIR) and never copied into the
repository; its versions live under var/ (var/realdata/ikea/artifacts, OUT/ikea-heldout/).
Timings are from whatever machine runs it, with whatever else runs there: the JSON says which.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import invocation, load_queries, machine, percentiles_ms
from bench.load import free_port, scrape, stage_means, start_server, stop_server, wait_ready
from bench.realdata.common import DATA, OUT, require

HEADS = ("primary", "other")


def emit(results: list[dict[str, Any]], record: dict[str, Any]) -> None:
    record = {**record, "machine": machine()}
    results.append(record)
    print(json.dumps(record), flush=True)


class Served:
    """`service serve` over one artifact folder (a pinned version when given) and a client of it."""

    def __init__(self, artifacts: Path, version: str | None = None, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = {"SERVICE_VERSION": version} if version else {}
        self.proc = start_server(artifacts, self.port, 1, {**extra, **(env or {})})

    def __enter__(self) -> Served:
        from service.client import SearchClient

        try:
            self.ready = wait_ready(self.url, self.proc, timeout_s=600)  # /readyz 200: loaded and warmed
        except BaseException:
            stop_server(self.proc)
            raise
        self.client = SearchClient(self.url, timeout=60, retries=3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        stop_server(self.proc)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")


def timed_search(served: Served, photo: bytes, **kw: Any) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    page = served.client.search_image(photo, **kw)
    return [h.id for h in page.results], time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ sample

def sample_catalog(sample: Path, limit: int | None, which: int = 0) -> list[tuple[str, Path]]:
    """(listing id, its photo `which`: 0 the primary, 1 its first other photo) for the listings that have it."""
    rows = [json.loads(line) for line in (sample / "catalog.jsonl").read_text().splitlines() if line.strip()]
    pairs = [(r["id"], sample / r["images"][which]) for r in rows if len(r.get("images") or ()) > which]
    return pairs[:limit] if limit else pairs


def part_sample(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    with Served(args.artifacts) as s:
        for which, photo_kind in ((0, "primary photo"), (1, "first other photo")):
            photos = [(lid, path.read_bytes()) for lid, path in sample_catalog(args.sample, args.limit, which)]
            for head in args.heads:
                sample_head(s, photos, photo_kind, head, results)


def sample_head(s: Served, photos: list[tuple[str, bytes]], photo_kind: str, head: str,
                results: list[dict[str, Any]]) -> None:
    before = scrape(s.url)
    ranks, seconds = [], []
    for lid, photo in photos:
        got, dt = timed_search(s, photo, k=10, head=head)
        ranks.append(got.index(lid) if lid in got else 10)
        seconds.append(dt)
    stages = stage_means(before, scrape(s.url))
    n = len(ranks)
    emit(results, {"bench": "photo_search", "part": "sample", "photo": photo_kind, "head": head, "queries": n,
                   "items": s.ready["items"], "index_version": s.ready["index_version"],
                   "recall@1": round(sum(r < 1 for r in ranks) / n, 4),
                   "recall@10": round(sum(r < 10 for r in ranks) / n, 4),
                   "latency_ms": percentiles_ms(seconds),
                   "server_photo_encode_ms_per_batch": stages.get("photo_encode"),
                   "server_search_ms_per_batch": stages.get("search"),
                   "photo_runtime": s.ready.get("photo_search", {}).get("runtime")})


def phone_photo(path: Path, size: tuple[int, int] = (4000, 3000)) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def text_latency(served: Served, queries: list[str]) -> dict[str, float]:
    seconds = []
    for q in queries:
        t0 = time.perf_counter()
        served.client.search(q, k=10)
        seconds.append(time.perf_counter() - t0)
    return percentiles_ms(seconds)


def part_latency(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    pairs = sample_catalog(args.sample, None)
    big = phone_photo(pairs[0][1])
    queries = load_queries(args.sample, args.text_queries)
    for image_search in ("false", "true"):
        with Served(args.artifacts, env={"SERVICE_IMAGE_SEARCH": image_search}) as s:
            text_latency(s, queries[:50])  # warm the connection and the first calls
            record: dict[str, Any] = {"bench": "photo_search", "part": "latency", "image_search": image_search == "true",
                                      "rss_mb_after_warmup": s.rss_mb(), "get_search_ms": text_latency(s, queries)}
            if image_search == "true":
                seconds = [timed_search(s, big, k=10)[1] for _ in range(args.big_requests)]
                record.update({"photo_12mp_jpeg_bytes": len(big), "photo_12mp_ms": percentiles_ms(seconds),
                               "rss_mb_after_photos": s.rss_mb()})
            emit(results, record)


# -------------------------------------------------------------------------------------------- ikea

def held_out(image: str) -> bool:
    """The test half of the room photos: a stable hash of the photo's path."""
    return hashlib.sha1(f"photo-search:{image}".encode()).digest()[0] < 128


def ikea_rooms(src: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (src / "rooms.jsonl").read_text().splitlines() if line.strip()]


def heldout_catalog(src: Path, folder: Path, test: set[str]) -> Path:
    """The IKEA catalog without the held-out room photos (absolute paths into ../shared/data/ikea;
    nothing copied), written under var/."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "catalog.jsonl"
    lines = []
    for line in (src / "catalog.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            row["images"] = [str((src / ref).resolve()) for ref in row.get("images", []) if ref not in test]
            lines.append(json.dumps(row))
    out.write_text("\n".join(lines) + "\n")
    return out


def build_ikea(catalog: Path, artifacts: Path, image_cache: Path, images_root: Path | None) -> None:
    """`ft` as bench/realdata/ikea.py builds it (self-supervised, exact Flat index, unpublished)."""
    from bench.realdata.runs import build_run, parse_spec
    from index.store.artifacts import ArtifactStore
    from service.build.pipeline import build_index, build_options

    if images_root is None:
        build_run(parse_spec("ft"), catalog=catalog, artifacts=artifacts, interactions=None, image_cache=image_cache)
        return
    if "ft" not in ArtifactStore(artifacts).list_versions():
        print(f"$ nice -n 10 service build-index --catalog {catalog} --artifacts {artifacts} --objective ft "
              f"--index-key Flat --device cpu --no-publish --version ft --no-progress --image-cache {image_cache} "
              f"--images-root {images_root}", flush=True)
        build_index(build_options(catalog=catalog, artifacts=artifacts, interactions=None, objective="ft",
                                  index_key="Flat", device="cpu", publish=False, version="ft", progress=False,
                                  image_cache=image_cache, images_root=images_root))


def room_metrics(ranked: list[list[str]], rooms: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.realdata.scoring import score_sets

    m = score_sets(ranked, [{i: 1.0 for i in r["item_ids"]} for r in rooms], (10, 50))
    return {k: m[k] for k in ("recall@10", "recall@50", "ndcg@10")} | {"ci": m.get("ci"), "rooms": len(rooms)}


def efficientnet_baseline(src: Path, image_cache: Path, rooms: list[dict[str, Any]]) -> dict[str, Any]:
    """Frozen EfficientNet-Lite0 features, room photo vs each listing's catalogue photo (cosine)."""
    import numpy as np

    from bench.realdata.ikea_tasks import load_ikea, rank_sets, unit_rows

    data = load_ikea(src, image_cache)
    keep = [j for j, r in enumerate(data.rooms) if Path(r["image"]).relative_to(src.resolve()).as_posix()
            in {r["image"] for r in rooms}]
    prim = data.views.primary_image
    has = (prim >= 0) & data.ok[np.maximum(prim, 0)]
    target = np.zeros((len(prim), data.features.shape[1]), np.float32)
    target[has] = data.features[prim[has]]
    scores = unit_rows(data.room_features[keep]) @ unit_rows(target).T  # (R, n)
    scores[:, ~has] = -np.inf
    m = rank_sets(scores, [data.rooms[j]["item_rows"] for j in keep], data.ids, (10, 50))
    return {k: m[k] for k in ("recall@10", "recall@50", "ndcg@10")} | {"ci": m.get("ci"), "rooms": len(keep)}


def score_rooms(served: Served, src: Path, rooms: list[dict[str, Any]], head: str) -> tuple[dict[str, Any], list]:
    ranked, seconds = [], []
    for r in rooms:
        got, dt = timed_search(served, (src / r["image"]).read_bytes(), k=50, head=head)
        ranked.append(got)
        seconds.append(dt)
    return room_metrics(ranked, rooms), seconds


def part_ikea(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    src = DATA / "ikea"
    require(src / "rooms.jsonl")
    known = {json.loads(line)["id"] for line in (src / "catalog.jsonl").read_text().splitlines() if line.strip()}
    rooms = [{**r, "item_ids": [i for i in r["item_ids"] if i in known]} for r in ikea_rooms(src)]
    rooms = [r for r in rooms if r["item_ids"]]  # as bench/realdata/ikea_tasks.py: the listings in the catalog
    test = [r for r in rooms if held_out(r["image"])]
    image_cache = OUT / "ikea" / "image-cache"
    as_is = OUT / "ikea" / "artifacts"
    build_ikea(require(src / "catalog.jsonl"), as_is, image_cache, None)
    heldout = args.out / "ikea-heldout"
    build_ikea(heldout_catalog(src, heldout, {r["image"] for r in test}), heldout / "artifacts", image_cache, src)
    emit(results, {"bench": "photo_search", "part": "ikea", "system": "frozen EfficientNet-Lite0 (room vs "
                   "catalogue photo)", "rooms_set": "held-out half", **efficientnet_baseline(src, image_cache, test)})
    for name, artifacts, sets in (("ft, catalog as is", as_is, (("all", rooms), ("held-out half", test))),
                                  ("ft, held-out half of the room photos removed from the catalog",
                                   heldout / "artifacts", (("held-out half", test),))):
        with Served(artifacts, version="ft", env={"SERVICE_MAX_K": "50"}) as s:
            for head in args.heads:
                for set_name, chosen in sets:
                    metrics, seconds = score_rooms(s, src, chosen, head)
                    emit(results, {"bench": "photo_search", "part": "ikea", "system": name, "head": head,
                                   "rooms_set": set_name, **metrics, "items": s.ready["items"],
                                   "latency_ms": percentiles_ms(seconds)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("var/photo/artifacts"), help="the sample catalog's build")
    ap.add_argument("--sample", type=Path, default=Path("var/sample"))
    ap.add_argument("--parts", default="sample,latency,ikea")
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--limit", type=int, default=None, help="sample: only the first N listings")
    ap.add_argument("--text-queries", type=int, default=300)
    ap.add_argument("--big-requests", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("var/photo"))
    args = ap.parse_args(argv)
    args.heads = [h for h in args.heads.split(",") if h]
    args.artifacts, args.sample, args.out = args.artifacts.resolve(), args.sample.resolve(), args.out.resolve()
    print("$ " + " ".join(invocation()), flush=True)
    results: list[dict[str, Any]] = []
    parts = {"sample": part_sample, "latency": part_latency, "ikea": part_ikea}
    for name in args.parts.split(","):
        parts[name](args, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
