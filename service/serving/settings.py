"""Service settings: environment variables with the `SERVICE_` prefix (or keyword arguments).

Never built at import time: `create_app(settings)` receives one; `Settings()` reads the environment.
Every path, limit and device is here, so a deployment changes behaviour without code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="forbid", frozen=True)

    # --- artifacts
    artifacts: Path = Field(Path("var/artifacts"), description="artifact folder (DIR with versions/ and current)")
    version: str | None = Field(None, description="serve this version instead of following DIR/current")
    reload_poll_s: float = Field(5.0, ge=0, description="poll DIR/current every N s for a new version (0: off)")
    verify_checksums: bool = Field(True, description="refuse a version whose files fail their sha256")
    denylist_poll_s: float = Field(2.0, ge=0, description="re-read DIR/denylist.txt every N s (0: only at "
                                   "reload and POST /admin/deny); hides sold listings on every replica")

    # --- placement
    encoder_device: str = Field("auto", description="auto | cpu | cuda")
    index_device: str = Field("auto", description="auto | cpu | cuda | faiss-cpu | faiss-gpu | torch-cuda")
    index_gpu_shard: bool = Field(False, description="faiss-gpu with several GPUs: split the index across them "
                                  "(capacity) instead of a full copy on each (throughput)")
    torch_search_scratch_mb: float = Field(256, gt=0, le=65_536, description="torch-cuda: fp32 score scratch "
                                           "of one search (rows are scanned in chunks that fit; 6 GB unchunked at "
                                           "1,024 queries x 1M rows)")
    placed_recall_queries: int = Field(100, ge=0, le=10_000, description="at load, ANN recall of the index as "
                                       "placed (GPU fp16 copies included) on this many seeded stored vectors, "
                                       "reported in /readyz beside the tuned figure (0: off)")
    torch_mask_cache: int = Field(16, ge=1, le=4096, description="torch-cuda: distinct filter masks kept on the "
                                  "device (n bytes each), so a repeated filter costs no host->device copy")
    threads: int = Field(0, ge=0, description="CPU threads of every pool of the server (torch, OpenMP, BLAS, faiss, "
                         "onnxruntime), all workers together (0: the CPUs this process may use: affinity and cgroup "
                         "quota; service/cpu_budget.py)")
    torch_threads: int = Field(0, ge=0, description="intra-op threads for the CPU encoder (0: the threads budget)")
    encoder_backend: str = Field("auto", description="auto | torch | onnx | int8: the query encoder's runtime "
                                 "(auto: torch + CUDA graphs on GPU, the measured fastest on CPU; docs/SERVING.md)")
    search_threads: int = Field(1, ge=0, description="faiss OpenMP threads in the search worker thread (0: "
                                "faiss default, the threads budget); 1 keeps OpenMP's spinning threads off the cores that "
                                "the event loop and the encoder need (2.5x faster p50 on 2 cores, PERFORMANCE.md)")
    search_blas_threshold: int = Field(4, ge=1, description="faiss runs exact/IVF-Flat scans of this many queries "
                                       "or more as one BLAS matrix product (faiss' own default, 128000, scans query by "
                                       "query: 10x slower for a batch of 32 on 100k items, PERFORMANCE.md)")
    cuda_graphs: bool = Field(True, description="capture the GPU query encoder as CUDA graphs per batch x length "
                              "bucket at load (off: eager fp16)")

    # --- HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    image_base_url: str = Field("/images/", description="prefix for image URLs in responses")
    image_root: Path | None = Field(None, description="serve the served version's listing photos under /images from here (demo); "
                                  "only files a listing names, nothing else in the folder")
    cors_origins: list[str] = Field(default_factory=list, description="allowed CORS origins (closed by default)")
    admin_token: SecretStr | None = Field(None, description="bearer token for /admin/*; unset = admin endpoints off")

    # --- limits
    max_k: int = Field(500, ge=1, le=10_000)
    max_offset: int = Field(1_000, ge=0)
    max_query_chars: int = Field(256, ge=1)
    max_body_bytes: int = Field(16_384, ge=256)
    max_filter_values: int = Field(64, ge=1)
    max_fields: int = Field(32, ge=1, le=1_000, description="names in one request's fields= (price, attr.KEY, ...)")
    max_batch_queries: int = Field(32, ge=1, le=1_000, description="searches in one POST /search/batch body (413 "
                                   "above; max_body_bytes applies too)")

    # --- search by photo: POST /search/image (docs/SERVING.md §12)
    image_search: bool = Field(True, description="load the photo encoder (EfficientNet-Lite0 backbone + the version's "
                               "photo heads) with each version and answer POST /search/image (false: 404, and the "
                               "~90 MB of RSS per worker are not spent: measured, docs/SERVING.md §12)")
    image_head: Literal["primary", "other"] = Field("primary", description="the photo head a shopper's photo goes "
                                                    "through unless the request names one: primary (catalogue shots) "
                                                    "| other (angles, in use, rooms); chosen by measurement: primary "
                                                    "wins on catalogue-like photos and ties on unseen room photos "
                                                    "(docs/RESULTS.md, \"Search by photo\")")
    max_image_bytes: int = Field(8 << 20, ge=1024, le=256 << 20, description="largest photo accepted, in bytes "
                                 "(413 above; the body of /search/image may be its base64 size + max_body_bytes)")
    max_image_pixels: int = Field(40_000_000, ge=1, le=64_000_000, description="largest photo accepted, width x "
                                  "height (413 above, checked from the header before any pixel is decoded)")
    image_max_batch: int = Field(8, ge=1, le=256, description="photos encoded in one backbone call")
    image_max_queue: int = Field(64, ge=1, description="photos waiting for the encoder beyond this get 429")

    # --- batching
    max_batch: int = Field(32, ge=1, le=4096)
    max_wait_us: int = Field(500, ge=0, description="how long a batch waits for company (microseconds)")
    max_queue: int = Field(1_024, ge=1, description="queued requests beyond this get 429")
    request_timeout_ms: int = Field(2_000, ge=1, description="per-request deadline (504 after it)")
    sched_batch: bool = Field(False, description="run the server's threads under Linux SCHED_BATCH: a request "
                              "arriving while the search worker holds the CPU waits for the scheduler tick instead "
                              "of preempting it, so the event loop handles arrivals in groups (more throughput on "
                              "contended cores and under overload; docs/RELIABILITY.md). Ignored elsewhere. Process-wide, so off "
                              "by default (a library or a test run keeps its scheduling); on in the served images "
                              "(Dockerfile) and the manifests (k8s/base/configmap.yaml)")
    sched_slice_us: int = Field(10_000, ge=0, le=100_000, description="with sched_batch: the threads' time "
                                "slice (Linux 6.12+; 0: the kernel's default, 1.4 ms on the 2-core dev machine). "
                                "A longer slice lets the encoder finish more of a batch before the event loop takes "
                                "the core, and the loop then handles a slice's worth of arrivals at once: more "
                                "served under overload, up to ~2 ms more p99 at 60% load on a shared core "
                                "(docs/RELIABILITY.md). The kernel takes 100..100000")

    # --- hybrid retrieval: dense + lexical (BM25), fused (docs/SERVING.md, docs/RESULTS.md); per-request options
    search_mode: Literal["dense", "lexical", "hybrid"] = Field(
        "hybrid", description="default mode of /search; hybrid falls back to dense on a version without a lexical index")
    fusion: Literal["rrf", "weighted"] = Field("weighted", description="weighted (min-max normalised scores; chosen on "
                                               "validation queries, docs/RESULTS.md) | rrf (reciprocal rank)")
    rrf_k: int = Field(60, ge=0, le=10_000, description="the RRF constant")
    dense_weight: float = Field(0.8, ge=0, le=1000, description="weight of the dense list in the fusion")
    lexical_weight: float = Field(0.2, ge=0, le=1000, description="weight of the lexical list in the fusion")
    fusion_candidates: int = Field(100, ge=1, le=10_000, description="rows taken from each list before fusing "
                                   "(at least offset + k)")
    identifier_boost: bool = Field(True, description="hybrid: listings holding the query's model number (a "
                                   "letters+digits token few listings have, e.g. TR-174) rank first")

    # --- result cache and query log (docs/SERVING.md)
    cache_size: int = Field(10_000, ge=0, description="LRU result cache entries (0: off); emptied on a version swap")
    query_log: Path | None = Field(None, description="append one JSON line per search here (unset: off)")
    query_log_redact: bool = Field(False, description="log the query's sha256 instead of its text")
    query_log_max_bytes: int = Field(64 << 20, ge=1024, description="rotate the query log at this size")
    query_log_backups: int = Field(5, ge=0, description="rotated query log files kept (path.1 .. path.N)")
    events_log: Path | None = Field(None, description="POST /events appends shoppers' clicks, carts and purchases "
                                    "here, one JSON line each, the training input of the next build (unset: POST "
                                    "/events answers 404); `{pid}` as in query_log")
    events_log_max_bytes: int = Field(64 << 20, ge=1024, description="rotate the events log at this size")
    events_log_backups: int = Field(5, ge=0, description="rotated events log files kept (path.1 .. path.N)")
    events_max_batch: int = Field(50, ge=1, le=10_000, description="events in one POST /events body (413 above; "
                                  "max_body_bytes applies too)")

    # --- warm-up and logs
    warmup_queries: int = Field(16, ge=0)
    log_level: str = "info"
    log_format: str = Field("json", description="json (one object per line, with request_id) | text")

    @field_validator("sched_slice_us")
    @classmethod
    def _slice(cls, v: int) -> int:
        if 0 < v < 100:
            raise ValueError("0 (the kernel's default) or 100..100000 microseconds")
        return v

    @field_validator("image_base_url")
    @classmethod
    def _slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"
